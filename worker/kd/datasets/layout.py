"""How an image-folder ZIP maps to samples and classes. Pure Python: the API checks uploads
with it, the worker reads jobs with it.

Folders that wrap everything are skipped (`data/train/cats/1.png` reads as `cats/1.png`);
then each top-level folder is a class, its images found at any depth below it, and classes
are numbered in sorted name order. Images with no folder of their own (all of them, or a
single folder of them) are an unlabeled set. Other files are ignored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from worker.kd.errors import InvalidDataset
from worker.kd.formats import is_image_name

FORMAT_HINT = (
    "An image dataset is a ZIP with one folder per class holding .png/.jpg/.jpeg files "
    "(cats/1.png, dogs/2.jpg), or of images alone for an unlabeled set."
)


@dataclass
class ImageLayout:
    members: list[str]  # image members, sorted
    labels: list[int] | None  # class index per member; None when unlabeled
    classes: list[str] | None  # class names in index order
    ignored: list[str]  # files that are not images

    def counts(self) -> dict[str, int]:
        """Images per class."""
        if self.classes is None or self.labels is None:
            return {}
        per_index = Counter(self.labels)
        return {name: per_index[i] for i, name in enumerate(self.classes)}


def image_layout(names: Iterable[str]) -> ImageLayout:
    """The images of a ZIP (its file members' names) and their classes."""
    files = [name for name in names if not name.endswith("/")]
    members = sorted(name for name in files if is_image_name(name))
    if not members:
        shown = ", ".join(repr(name) for name in files[:5]) + (", ..." if len(files) > 5 else "")
        found = f"found {shown}" if files else "it is empty"
        raise InvalidDataset(f"The ZIP holds no PNG or JPEG images ({found}). {FORMAT_HINT}")
    image_set = set(members)
    ignored = [name for name in files if name not in image_set]
    paths = [name.replace("\\", "/").split("/") for name in members]
    depth = 0
    while all(len(p) > depth + 1 for p in paths) and len({p[depth] for p in paths}) == 1:
        depth += 1
    loose = [m for m, p in zip(members, paths, strict=True) if len(p) == depth + 1]
    if len(loose) == len(members):
        return ImageLayout(members, None, None, ignored)
    if loose:
        foldered = next(m for m, p in zip(members, paths, strict=True) if len(p) > depth + 1)
        raise InvalidDataset(
            f"The ZIP has images beside the class folders ({loose[0]!r}) as well as in them "
            f"({foldered!r}); put every image in its class's folder. {FORMAT_HINT}"
        )
    classes = sorted({p[depth] for p in paths})
    index = {name: i for i, name in enumerate(classes)}
    return ImageLayout(members, [index[p[depth]] for p in paths], classes, ignored)
