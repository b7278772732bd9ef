"""``python -m skinedge.export.web [FOLDER]``: fetch the pinned ONNX Runtime Web files once
(``npm pack``, sha256-checked) into the local cache that ``skinedge export --target web`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

from skinedge.errors import SkinedgeError
from skinedge.export.web.ortweb import ORT_WEB_PACKAGE, ORT_WEB_VERSION, fetch_ort_web


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        folder = fetch_ort_web(Path(argv[0]) if argv else None)
    except SkinedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{ORT_WEB_PACKAGE} {ORT_WEB_VERSION}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
