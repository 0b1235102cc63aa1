"""Reading the owner's own files that their mode keeps the owner out of.

An unprivileged store keeps modes as the archive gives them, and cannot
bypass them as root does: ``/etc/shadow`` is ``0000`` in Fedora and RHEL
images, ``sudo`` is ``4111``.  To copy, export or compare such a file, its
owner's read bit is added for the moment of the ``open`` and the mode put
back at once (the open file stays readable; the file's times are untouched).
Root never gets here: its opens do not fail for a mode.
"""

from __future__ import annotations

import os
import stat

#: How files are opened for reading: never through a symlink.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_readable(name: str, dir_fd: int | None = None, flags: int = READ_FLAGS) -> int:
    """``os.open(name, flags, dir_fd=dir_fd)``, or, refused for its mode, the same regular file
    of ours opened as above; PermissionError as before for anything else."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        pass
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        inode = f"/proc/self/fd/{path_fd}"  # the very file opened above, whatever its name now
        for _ in range(_TRIES):
            st = os.fstat(path_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                break
            mode = stat.S_IMODE(st.st_mode)
            try:
                if mode & 0o400:  # another reader's grant: it serves, unless taken back meanwhile
                    return os.open(inode, flags & ~os.O_NOFOLLOW)
                os.chmod(inode, mode | 0o400)
                try:
                    return os.open(inode, flags & ~os.O_NOFOLLOW)
                finally:
                    os.chmod(inode, mode)
            except PermissionError:
                continue  # another reader took its grant back between our chmod and open: again
        raise PermissionError(13, os.strerror(13), name)
    finally:
        os.close(path_fd)


#: Rounds of grant and open before giving up (readers of one file race only briefly).
_TRIES = 100
