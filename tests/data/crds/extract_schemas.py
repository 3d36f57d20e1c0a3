"""Re-extract the CRD schemas the manifest tests validate against (a helper, not a test).

Usage: python tests/data/crds/extract_schemas.py [CRD_DIR]   (default: ../shared/ome-crds beside the repository)

Each output file holds `spec.versions[0].schema.openAPIV3Schema` of one CRD, unchanged, as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

# libyaml parses the 1.8 MB CRDs much faster; fall back to the pure-Python loader without it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path(__file__).resolve().parents[4] / "shared" / "ome-crds"

# CRD file in OME's config/crd/full/ -> schema file here
SOURCES = {
    "ome.io_inferenceservices.yaml": "inferenceservice.schema.json",
    "ome.io_benchmarkjobs.yaml": "benchmarkjob.schema.json",
    "ome.io_clusterservingruntimes.yaml": "clusterservingruntime.schema.json",
}


def extract(crd_dir: Path = DEFAULT_SOURCE, out_dir: Path = HERE) -> list[Path]:
    written = []
    for crd_file, schema_file in SOURCES.items():
        crd = yaml.load((crd_dir / crd_file).read_text(), Loader=_LOADER)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        target = out_dir / schema_file
        target.write_text(json.dumps(schema, indent=1) + "\n")
        written.append(target)
    return written


if __name__ == "__main__":
    for path in extract(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE):
        print(path)
