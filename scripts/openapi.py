"""Write the service's OpenAPI spec to docs/openapi.json (checked by tests/service/test_api.py).

    python scripts/openapi.py [--out docs/openapi.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skinedge.service import ServeSettings, create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" /
                        "openapi.json")
    args = parser.parse_args()
    spec = create_app(ServeSettings(model=Path("model.onnx"))).openapi()  # nothing is loaded
    args.out.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({len(spec['paths'])} paths)")


if __name__ == "__main__":
    main()
