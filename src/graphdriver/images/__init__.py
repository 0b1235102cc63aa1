"""Images, containers and commits on top of the layer store.

From Python::

    import graphdriver
    from graphdriver import images

    store = graphdriver.open_store("/var/lib/graphdriver")
    [image] = images.load(store, "deb.tar")           # docker-archive, oci-archive or OCI layout
    ctr = images.create_container(store, "deb:2", "web")
    root = store.mount("web")                         # the container's root filesystem
    ...
    store.unmount("web")
    images.commit(store, "web", "localhost/web:1")
    images.save(store, "localhost/web:1", "web.tar", "docker-archive")

Layers are shared by chain id; every DiffID is checked against the config.
"""

from graphdriver.images.container_layers import Container, commit, container, containers
from graphdriver.images.container_layers import create as create_container
from graphdriver.images.container_layers import remove as remove_container
from graphdriver.images.manage import Removal, image, images, inspect, load, remove, save, tag
from graphdriver.images.records import ImageRecord

__all__ = [
    "Container",
    "ImageRecord",
    "Removal",
    "commit",
    "container",
    "containers",
    "create_container",
    "image",
    "images",
    "inspect",
    "load",
    "remove",
    "remove_container",
    "save",
    "tag",
]
