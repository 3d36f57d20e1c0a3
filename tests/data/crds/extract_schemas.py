"""Re-extract the CRD schemas the manifest tests validate against (a helper, not a test).

Usage: python tests/data/crds/extract_schemas.py [OME_CRD_DIR [KUBERAY_CRD_DIR]]
(defaults: ../shared/ome-crds beside the repository; KubeRay's ray-operator/config/crd/bases is
not on disk by default: give the folder of a KubeRay checkout to refresh its two schemas)

Each output file holds the openAPIV3Schema of one CRD's served version (OME: its only one,
v1beta1; KubeRay: v1), unchanged, as JSON.
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
# CRD file in KubeRay's ray-operator/config/crd/bases/ -> schema file here (version v1)
KUBERAY_SOURCES = {"ray.io_rayjobs.yaml": "rayjob.schema.json", "ray.io_rayclusters.yaml": "raycluster.schema.json"}


def extract(crd_dir: Path, sources: dict[str, str], version: str | None = None, out_dir: Path = HERE,
            indent: int | None = 1) -> list[Path]:
    written = []
    for crd_file, schema_file in sources.items():
        crd = yaml.load((crd_dir / crd_file).read_text(), Loader=_LOADER)
        versions = crd["spec"]["versions"]
        chosen = next(v for v in versions if v["name"] == version) if version else versions[0]
        target = out_dir / schema_file
        target.write_text(json.dumps(chosen["schema"]["openAPIV3Schema"], indent=indent) + "\n")
        written.append(target)
    return written


if __name__ == "__main__":
    paths = extract(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE, SOURCES)
    if len(sys.argv) > 2:  # KubeRay's are large: written compact
        paths += extract(Path(sys.argv[2]), KUBERAY_SOURCES, version="v1", indent=None)
    for path in paths:
        print(path)
