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

TYPE_CHECKING = False
if TYPE_CHECKING:
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

# Where each name lives (and its name there): imported when first asked for, so that a
# command that lists images does not load what loading, saving or committing them needs.
_LAZY = {
    **dict.fromkeys(("Container", "commit", "container", "containers"), "container_layers"),
    "create_container": "container_layers:create",
    "remove_container": "container_layers:remove",
    **dict.fromkeys(("Removal", "image", "images", "inspect", "load", "remove", "save", "tag"), "manage"),
    "ImageRecord": "records",
}


def __getattr__(name: str) -> object:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'graphdriver.images' has no attribute {name!r}")
    import sys

    module, _, attr = where.partition(":")
    full = f"graphdriver.images.{module}"
    __import__(full)
    return getattr(sys.modules[full], attr or name)
