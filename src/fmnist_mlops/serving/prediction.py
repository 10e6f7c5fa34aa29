"""Predict with a logged model from image files or real test images (``src/predict.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_mlops.runtime.errors import DataError, ProjectError


def to_fashion_mnist(image: Any, polarity: str = "auto") -> np.ndarray:
    """Convert a PIL image of any size to a 28x28 float32 array in Fashion-MNIST's style.

    Fashion-MNIST shows a *light* garment on a *dark* (0) background, the opposite of most
    product photos. ``polarity="auto"`` inverts the image when its border is mostly light;
    "invert" and "keep" force the choice. The image is padded to a square with the
    background colour (keeping the aspect ratio) and resized to 28x28 by area averaging.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)  # transparent = white paper
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    invert = polarity == "invert" or (polarity == "auto" and float(border.mean()) > 127.5)
    if invert:
        gray = 255.0 - gray
    h, w = gray.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = gray
    # Area averaging when shrinking (no ringing around the garment's edges).
    method = Image.Resampling.BOX if side >= 28 else Image.Resampling.BICUBIC
    small = Image.fromarray(square.astype(np.uint8)).resize((28, 28), method)
    return np.asarray(small, dtype=np.float32)


# Pillow's own decompression-bomb threshold (it only warns up to twice this): a header may
# declare any canvas, so the size is checked before a single pixel is decoded.
MAX_PIXELS = 89_478_485
# Larger images are first reduced by whole factors down to about this side: decoding and
# shrinking a canvas near the cap then stays far below 1.5 GB.
_REDUCE_TO = 1024


def check_image(path: Path) -> None:
    """Refuse a file that is not an image or whose header declares more than MAX_PIXELS.

    Raises:
        DataError: One line naming the file (and the pixel cap when that is the reason).
    """
    import warnings as _warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        import re

        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,} pixels" if found else "a canvas"
        raise DataError(
            f"{path}: its header declares {declared}, above the cap of {MAX_PIXELS:,} pixels: "
            "expected a smaller image"
        ) from None
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{path}: {width}x{height} = {width * height:,} pixels is above the cap of "
            f"{MAX_PIXELS:,} pixels: expected a smaller image"
        )


def load_images(paths: list[Path], polarity: str = "auto") -> np.ndarray:
    """Read image files into an (N, 28, 28) array; one-line error naming a bad file.

    Every file is checked (:func:`check_image`) before any is decoded.
    """
    import warnings as _warnings

    from PIL import Image, UnidentifiedImageError

    for path in paths:
        check_image(path)
    arrays = []
    for path in paths:
        try:
            with _warnings.catch_warnings():
                _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    factor = max(img.size) // _REDUCE_TO
                    arrays.append(
                        to_fashion_mnist(img.reduce(factor) if factor > 1 else img, polarity)
                    )
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return np.stack(arrays)


def _load_model(model_uri: str, tracking_uri: str | None):
    from fmnist_mlops.tracking.databases import first_line, hide_password
    from fmnist_mlops.tracking.store import check_uri, connect, load_logged_model, tracking_setting

    if tracking_uri is not None:
        setting, uri = "--tracking-uri", tracking_uri
    else:
        setting, uri = tracking_setting(None)
    check_uri(setting or "the default tracking URI", uri)
    connect(uri)
    try:
        return load_logged_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - MLflow, OSError, SQLAlchemy: all mean "cannot"
        raise ProjectError(
            f"--model-uri={model_uri} cannot be loaded from {hide_password(uri)}: "
            f"{first_line(exc)} "
            "(run `make repro` first?)"
        ) from None


def predict_files(model, paths: list[Path], images: np.ndarray, top_k: int) -> list[dict[str, Any]]:
    """Predict the images read from ``paths``; the served model's records with a ``file`` key."""
    records = model.predict(images, params={"top_k": top_k})
    return [{"file": str(p), **r} for p, r in zip(paths, records, strict=True)]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python src/predict.py IMAGE... | --test-samples N``."""
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Classify garment images with a logged model."
    )
    parser.add_argument("images", nargs="*", type=Path, help="PNG/JPEG files of any size")
    parser.add_argument(
        "--model-uri", default=None, help="default: models:/<registry.model_name>@<alias> of conf/"
    )
    parser.add_argument("--tracking-uri", default=None, help="default: the project's store")
    parser.add_argument(
        "--polarity",
        choices=("auto", "invert", "keep"),
        default="auto",
        help="auto: invert light-background photos to Fashion-MNIST's dark background",
    )
    parser.add_argument("--top-k", type=int, default=0, help="also list the k best classes")
    parser.add_argument(
        "--test-samples",
        type=int,
        default=0,
        metavar="N",
        help="walk through the first N real test images: ten probabilities, predicted, true",
    )
    args = parser.parse_args(argv)
    if not args.images and not args.test_samples:
        parser.error("give IMAGE files or --test-samples N")
    _check_args(args)
    # Bad files (unreadable, or a header declaring a huge canvas) fail before the model loads.
    images = load_images(args.images, args.polarity) if args.images else None
    if args.model_uri is None:
        from fmnist_mlops.config.compose import champion_uri

        args.model_uri = champion_uri()
    model = _load_model(args.model_uri, args.tracking_uri)
    if args.test_samples:
        _walkthrough(model, args.test_samples)
    if args.images:
        rows = predict_files(model, args.images, images, args.top_k)
        width = max(len("file"), *(len(r["file"]) for r in rows))
        print(f"{'file':<{width}}  {'class':<12} probability")
        for r in rows:
            print(f"{r['file']:<{width}}  {r['class']:<12} {r['probability']:.4f}")
            for alt in r.get("top_k", [])[1:]:
                print(f"{'':<{width}}    {alt['class']:<10} {alt['probability']:.4f}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    from fmnist_mlops.config.schema import CLASS_NAMES, TEST_IMAGES

    if not 0 <= args.top_k <= len(CLASS_NAMES):
        raise ProjectError(
            f"--top-k={args.top_k} is invalid: expected an integer in [0, {len(CLASS_NAMES)}]"
        )
    if not 0 <= args.test_samples <= TEST_IMAGES:
        raise ProjectError(
            f"--test-samples={args.test_samples} is invalid: expected an integer in "
            f"[1, {TEST_IMAGES}] (the real test images)"
        )


def _walkthrough(model, n: int) -> None:
    """The tutorial's last step on real test images, with the true class beside the guess."""
    from fmnist_mlops.config.compose import compose, validate
    from fmnist_mlops.config.schema import CLASS_NAMES
    from fmnist_mlops.data.idx import load_raw, locate

    _, files = locate(validate(compose()).data)
    arrays, _ = load_raw(files)
    x, y = arrays["test-images"][:n], arrays["test-labels"][:n]
    records = model.predict(x.astype(np.float32), params={"top_k": 0})
    for i, (record, true) in enumerate(zip(records, y, strict=True)):
        probs = "  ".join(f"{p:.3f}" for p in record["probabilities"])
        mark = "ok" if record["index"] == int(true) else "WRONG"
        print(f"test image {i}: [{probs}]")
        print(
            f"  predicted {record['class']} ({record['probability']:.3f}), "
            f"true {CLASS_NAMES[int(true)]}  {mark}"
        )
