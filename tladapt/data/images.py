"""Image-folder and image-list datasets, decoded once into a ``uint8`` cache.

Two layouts, named in ``data.dataset``:

* ``"image_folder:/root"``: one sub-folder per domain, one sub-folder per class
  inside it, images anywhere below (the Office-31, Office-Home, PACS, VisDA and
  DomainNet layouts; an Office-31 style ``<domain>/images/<class>/`` level is
  descended into). Classes are the sorted class-folder names, and samples are
  ordered as ``torchvision.datasets.ImageFolder`` orders them (class, then sorted
  walk), so indices agree with it. Files whose extension is not an image
  extension are skipped and counted (a warning names the count and an example).
* ``"image_list:/root"``: the image lists of TLlib: ``/root/image_list/<domain>.txt``
  with one ``relative/path label`` line per image (paths relative to ``/root``,
  labels 0-based). The class count is the largest label of all lists plus one;
  class names come from ``image_list/classes.txt`` (one per line) when present,
  else from the images' parent folders when each label has one, else the labels.

Every image is decoded once with Pillow exactly as torchvision's default loader
does (``Image.open(f).convert("RGB")``: greyscale replicated, alpha dropped),
resized once to the working size ``S`` (``data.image_size``; shorter side to
``S`` then the centre ``S x S``, or ``data.image_resize = "stretch"``: straight to
``S x S`` as TLlib's ``ResizeImage``), and stored as a ``(n, 3, S, S)`` ``uint8``
``.npy`` file. The file name holds a key of the files' relative paths, byte sizes,
modification times and labels, the working size and mode and the Pillow version,
so a changed folder builds a new cache (the old one is then removed); the file is
written to a temporary name and renamed, so a crash never leaves a partial cache.
It loads memory-mapped, in well under a second.

Memory: one image is ``3 S²`` bytes, 196,608 at S = 256. Office-31 (4,110
images) is 0.81 GB, Office-Home (15,588) 3.06 GB, VisDA-2017 train + validation
(207,785) 40.9 GB, DomainNet (586,575) 115 GB, its largest pair (real 175,327 +
painting 75,759) 49 GB. See ``data.placement`` for domains that do not fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tladapt.data.augment import AugmentSpec, EvalTransform, ImageFormat
from tladapt.data.domain import Domain

__all__ = ["IMG_EXTENSIONS", "ImageOptions", "ImageIndex", "ImageDataset", "is_image_dataset", "decode_image",
           "cached_pixels", "load_image_domain", "prepare_images"]

#: Extensions read as images (those of ``torchvision.datasets.folder``), compared case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_CACHE_VERSION = 1
_PREFIXES = ("image_folder:", "image_list:")


@dataclass(frozen=True)
class ImageOptions:
    """How images are decoded into the cache (``data.image_size``, ``data.image_resize``, ``data.cache_dir``).

    Attributes:
        size: working side ``S`` in pixels.
        resize: ``"center_crop"`` (shorter side to ``S``, centre ``S x S``; torchvision
            ``Resize(S)`` + ``CenterCrop(S)``) or ``"stretch"`` (``Resize((S, S))``).
        cache_dir: folder for the caches; ``""``: ``<root>/.tladapt-cache`` when the
            dataset folder is writable, else ``$XDG_CACHE_HOME/tladapt`` (``~/.cache/tladapt``).
    """

    size: int = 256
    resize: str = "center_crop"
    cache_dir: str = ""

    @classmethod
    def of(cls, data) -> "ImageOptions":
        """The options of a ``[data]`` section (:class:`tladapt.config.DataSection`)."""
        return cls(data.image_size, data.image_resize, data.cache_dir)


@dataclass(frozen=True)
class ImageIndex:
    """The files of one image domain.

    Attributes:
        root: the dataset folder.
        domain: the domain's name.
        files: absolute paths, in sample order.
        labels: ``(n,)`` int64 labels, index into ``classes``.
        classes: class names.
        skipped: files left out because their extension is not an image extension.
    """

    root: Path
    domain: str
    files: tuple[Path, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: int = 0


def is_image_dataset(spec: str) -> bool:
    """Whether ``data.dataset`` names an image folder or image list."""
    return spec.startswith(_PREFIXES)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


@dataclass(frozen=True)
class ImageDataset:
    """A ``data.dataset`` of the form ``image_folder:/root`` or ``image_list:/root``.

    Raises:
        ValueError: (from :meth:`parse`) for a missing root folder, or an image list
            root without an ``image_list`` folder.
    """

    kind: str  # "folder" or "list"
    root: Path
    spec: str

    @classmethod
    def parse(cls, spec: str) -> "ImageDataset | None":
        """The dataset named by ``spec``, or None when ``spec`` is not an image dataset."""
        prefix = next((p for p in _PREFIXES if spec.startswith(p)), None)
        if prefix is None:
            return None
        root = Path(spec[len(prefix):]).expanduser()
        if not root.is_dir():
            raise ValueError(f"data.dataset {spec!r}: folder {root} does not exist")
        kind = "folder" if prefix == "image_folder:" else "list"
        if kind == "list" and not (root / "image_list").is_dir():
            raise ValueError(f"data.dataset {spec!r}: expected the image lists in {root / 'image_list'}/<domain>.txt")
        return cls(kind, root.resolve(), spec)

    def domains(self) -> tuple[str, ...]:
        """The domain names: non-hidden sub-folders, or the ``.txt`` lists (``classes.txt`` excepted)."""
        if self.kind == "folder":
            return tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        return tuple(sorted(p.stem for p in (self.root / "image_list").glob("*.txt") if p.name != "classes.txt"))

    def _check_domain(self, domain: str) -> None:
        names = self.domains()
        if domain not in names:
            raise ValueError(f"unknown domain {domain!r} of {self.spec}: expected one of {', '.join(names) or '(none)'}")

    def index(self, domain: str) -> ImageIndex:
        """List the files and labels of ``domain`` (no image is opened).

        Raises:
            ValueError: an unknown domain (listing the valid ones); for folders a
                domain without class sub-folders or a class folder without images
                (naming the folder); for lists a malformed line, a label outside
                ``0 .. classes - 1`` or a listed file that is missing or not an image
                (naming the list file and line).
        """
        self._check_domain(domain)
        return self._folder_index(domain) if self.kind == "folder" else self._list_index(domain)

    def _domain_dir(self, domain: str) -> Path:
        folder = self.root / domain
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if [p.name for p in subdirs] == ["images"]:  # Office-31: <domain>/images/<class>/
            folder = folder / "images"
        return folder

    def _folder_index(self, domain: str) -> ImageIndex:
        folder = self._domain_dir(domain)
        classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if not classes:
            raise ValueError(f"image folder {folder} has no class sub-folders: expected {folder}/<class>/<image>")
        files, labels, skipped, example = [], [], 0, None
        for label, name in enumerate(classes):
            found = 0
            for dirpath, dirnames, fnames in sorted(os.walk(folder / name, followlinks=True)):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for fname in sorted(fnames):
                    if _is_image(fname):
                        files.append(Path(dirpath) / fname)
                        labels.append(label)
                        found += 1
                    else:
                        skipped += 1
                        example = example or Path(dirpath) / fname
            if not found:
                raise ValueError(f"class folder {folder / name} holds no image ({', '.join(IMG_EXTENSIONS)}): "
                                 f"every class needs images in every domain")
        if skipped:
            warnings.warn(f"image domain {domain!r}: skipped {skipped} non-image file(s) in {folder} "
                          f"(e.g. {example})", stacklevel=2)
        return ImageIndex(self.root, domain, tuple(files), torch.tensor(labels, dtype=torch.int64), classes, skipped)

    def _read_list(self, path: Path) -> list[tuple[str, int]]:
        entries = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
            if int(parts[1]) < 0:
                raise ValueError(f"{path}:{lineno}: labels must be >= 0, got {parts[1]}")
            entries.append((parts[0], int(parts[1])))
        return entries

    def _list_classes(self) -> tuple[str, ...]:
        lists = {d: self._read_list(self.root / "image_list" / f"{d}.txt") for d in self.domains()}
        n = 1 + max((label for entries in lists.values() for _, label in entries), default=-1)
        names_file = self.root / "image_list" / "classes.txt"
        if names_file.is_file():
            names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
            if len(names) < n:
                raise ValueError(f"{names_file} names {len(names)} classes, but the lists use labels up to {n - 1}")
            return names
        parents: dict[int, set[str]] = {}
        for entries in lists.values():
            for rel, label in entries:
                parents.setdefault(label, set()).add(Path(rel).parent.name)
        unique = [next(iter(parents[k])) if len(parents.get(k, ())) == 1 else None for k in range(n)]
        if all(unique) and len(set(unique)) == n:
            return tuple(unique)
        return tuple(str(k) for k in range(n))

    def _list_index(self, domain: str) -> ImageIndex:
        path = self.root / "image_list" / f"{domain}.txt"
        entries = self._read_list(path)
        if not entries:
            raise ValueError(f"image list {path} is empty: expected one 'relative/path label' line per image")
        classes = self._list_classes()
        files = []
        for lineno, (rel, _) in enumerate(entries, 1):
            file = self.root / rel
            if not _is_image(rel):
                raise ValueError(f"{path}: {rel!r} is not an image file ({', '.join(IMG_EXTENSIONS)})")
            if not file.is_file():
                raise ValueError(f"{path}: listed image {file} does not exist")
            files.append(file)
        labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
        return ImageIndex(self.root, domain, tuple(files), labels, classes)


def decode_image(path: str | Path, size: int, resize: str = "center_crop") -> np.ndarray:
    """Decode one image as torchvision's default loader and resize it to ``size x size``.

    ``Image.open(f).convert("RGB")``, then ``resize = "center_crop"``: the shorter side
    to ``size`` (the longer ``int(size * long / short)``, bilinear with Pillow's
    antialiasing, as ``torchvision.transforms.Resize(size)`` on a PIL image) and the
    centre ``size x size`` (offsets ``round((side - size) / 2)``, as ``CenterCrop``);
    ``"stretch"``: straight to ``size x size``.

    Returns:
        ``(3, size, size)`` uint8 array.

    Raises:
        OSError / PIL.UnidentifiedImageError / ValueError: for an unreadable or truncated file.
    """
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img = img.convert("RGB")
    w, h = img.size
    if resize == "stretch":
        new_w, new_h = size, size
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    if (new_w, new_h) != (size, size):
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _key(index: ImageIndex, options: ImageOptions) -> str:
    import PIL

    entries = []
    for file, label in zip(index.files, index.labels.tolist()):
        st = file.stat()
        entries.append([str(file.relative_to(index.root)), st.st_size, st.st_mtime_ns, label])
    blob = json.dumps([_CACHE_VERSION, options.size, options.resize, PIL.__version__, entries])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _cache_dir(root: Path, options: ImageOptions) -> Path:
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    if options.cache_dir:
        return Path(options.cache_dir).expanduser() / f"{root.name}-{tag}"
    if os.access(root, os.W_OK):
        return root / ".tladapt-cache"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tladapt" / f"{root.name}-{tag}"


def cached_pixels(index: ImageIndex, options: ImageOptions = ImageOptions(), progress: bool | None = None) -> torch.Tensor:
    """The domain's images as a ``(n, 3, S, S)`` uint8 tensor, decoded once and cached.

    Looks for ``<cache dir>/<domain>-<resize><S>-<key>.npy`` (see the module docstring
    for the key); when absent, decodes every image (a thread pool, a tqdm bar), writes
    the file atomically and removes the domain's caches with other keys.

    Args:
        index: the files (:meth:`ImageDataset.index`).
        options: working size, resize mode and cache folder.
        progress: show the bar (None: only on a terminal).

    Returns:
        A memory-mapped (copy-on-write) CPU tensor.

    Raises:
        ValueError: listing every file that Pillow cannot read (up to 20), after
            trying all of them; nothing is cached then.
        ImportError: when Pillow is not installed (``pip install 'tladapt[vision]'``).
    """
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError("image datasets need Pillow: pip install 'tladapt[vision]' "
                          "(or scripts/install.sh --vision)") from None
    from tqdm import tqdm

    folder = _cache_dir(index.root, options)
    stem = f"{index.domain}-{options.resize}{options.size}"
    path = folder / f"{stem}-{_key(index, options)}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path, mmap_mode="c"))
    folder.mkdir(parents=True, exist_ok=True)
    n, s = len(index.files), options.size
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, s, s))
    failed: list[str] = []

    def work(i: int) -> None:
        try:
            out[i] = decode_image(index.files[i], s, options.resize)
        except Exception as err:  # Pillow raises OSError, UnidentifiedImageError, ValueError, ...
            failed.append(f"{index.files[i]} ({type(err).__name__}: {err})")

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for _ in tqdm(pool.map(work, range(n)), total=n, disable=None if progress is None else not progress,
                          desc=f"decoding {index.domain} ({n} images, once)", leave=False):
                pass
        if failed:
            raise ValueError(f"image domain {index.domain!r}: {len(failed)} unreadable image(s); fix or remove "
                             f"them: " + "; ".join(sorted(failed)[:20]))
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    for old in folder.glob(f"{stem}-*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def default_format() -> ImageFormat:
    """The :class:`ImageFormat` of image-folder domains: uint8, ImageNet normalisation, augmented."""
    return ImageFormat()


def load_image_domain(dataset: ImageDataset, domain: str, options: ImageOptions = ImageOptions(),
                      progress: bool | None = None) -> Domain:
    """Load one domain of an image dataset through the cache.

    Returns:
        A :class:`Domain` with ``x`` ``(n, 3, S, S)`` uint8, labels, the dataset's
        classes, ``image`` = :func:`default_format` and the default evaluation view
        (centre ``7/8 S`` crop, ImageNet normalisation); the run's ``[augment]``
        section replaces the views (:func:`tladapt.data.augment.attach`).

    Raises:
        ValueError: as :meth:`ImageDataset.index` and :func:`cached_pixels`.
    """
    index = dataset.index(domain)
    x = cached_pixels(index, options, progress)
    fmt = default_format()
    spec = AugmentSpec(size=fmt.input_size(options.size), max_value=fmt.max_value, mean=fmt.mean, std=fmt.std)
    return Domain(domain, x, index.labels, index.classes, transform=EvalTransform(spec), image=fmt)


def prepare_images(data, augment, progress: bool | None = None) -> None:
    """Check an image dataset config and build the caches of every domain its tasks use.

    Called by :func:`tladapt.experiment.prepare` before any run directory exists, so
    that a missing folder, a class missing in a domain, an unreadable image or an
    input size larger than ``data.image_size`` stops the experiment up front; the
    decoding it does is the one the runs would do (they then load the caches).

    Args:
        data: the config's ``[data]`` section (``dataset`` an image dataset).
        augment: the ``[augment]`` section.

    Raises:
        ConfigError: naming the key, folder or file.
    """
    from tladapt.config import parse_task
    from tladapt.data.augment import resolve_spec
    from tladapt.errors import ConfigError

    try:
        dataset = ImageDataset.parse(data.dataset)
        resolve_spec(default_format(), data.image_size, 3, augment)
        indexes: dict[str, ImageIndex] = {}
        for task in data.tasks:
            names = parse_task(task)
            for name in names:
                if name not in indexes:
                    indexes[name] = dataset.index(name)
            a, b = (indexes[n] for n in names)
            if a.classes != b.classes:
                missing_b = sorted(set(a.classes) - set(b.classes))
                missing_a = sorted(set(b.classes) - set(a.classes))
                raise ValueError(f"data.tasks entry {task!r}: the domains' classes differ ("
                                 f"missing in {b.domain!r}: {', '.join(missing_b) or '-'}; "
                                 f"missing in {a.domain!r}: {', '.join(missing_a) or '-'})")
        for index in indexes.values():
            cached_pixels(index, ImageOptions.of(data), progress)
    except (ValueError, ImportError) as err:
        raise ConfigError(str(err)) from None
