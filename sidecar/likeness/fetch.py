"""`sidecar models fetch ccip`: the one explicit download of the likeness weights (never at job time).

huggingface_hub's `hf_hub_download` from deepghs/ccip_onnx, the three files of one model into
`<models>/likeness/<model>/` (the hub's own layout under `local_dir`), each answered with its size and
sha256 so the artist can see what was fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import LikenessUnavailable
from sidecar.likeness.ccip import FILES, HUB_REPO, file_sha256


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str


def fetch_ccip(models_dir: Path, model: str, revision: str | None = None,
               endpoint: str | None = None) -> list[Fetched]:
    """`endpoint`: a hub mirror (huggingface_hub's default: huggingface.co, or HF_ENDPOINT)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise LikenessUnavailable("Fetching the likeness weights needs huggingface_hub: pip install huggingface_hub",
                                  {"fix": "pip install huggingface_hub"}) from None
    root = models_dir / "likeness"
    root.mkdir(parents=True, exist_ok=True)
    done = []
    for name in FILES:
        try:
            local = Path(hf_hub_download(HUB_REPO, f"{model}/{name}", revision=revision, local_dir=root,
                                         endpoint=endpoint))
        except Exception as exc:  # offline, 404, disk: one code, the cause in the message
            raise LikenessUnavailable(f"Could not fetch {HUB_REPO}/{model}/{name}: {exc}",
                                      {"repo": HUB_REPO, "model": model, "file": name}) from None
        done.append(Fetched(local, local.stat().st_size, file_sha256(local)))
    return done
