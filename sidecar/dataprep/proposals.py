"""Caption proposals (`dataset caption DIR --auto`): a proposer looks at each source image and proposes
its framing, pose and background into `captions.csv`, marked `proposed` for the artist to confirm.

Rules the table keeps: a row the artist confirmed (status `confirmed`, or filled in by hand before
proposals existed: no status and all three parts) is never overwritten; a row still `proposed` is
proposed again; a row half filled by hand keeps what the artist typed and gets proposals only for the
empty parts. Flips are not rows (their captions follow their source's, plus the flip tag, when the
table is written out with `caption --table`), and the trigger word is never a part: it is put first
when captions are written. The table is written once, after every image was proposed: a proposer
that fails half way (Ollama stopped) leaves the table as it was; a row the artist changed while the
proposer ran (in the studio, or by hand) is kept as it now is.

`dataset caption --auto` and the studio's `POST /dataset/captions/propose` both run `run_proposals`.

Two proposers share one small interface (`Proposer.propose(image) -> Proposal`): the WD14 tagger
(`tagger.py`, mapped to the parts by `PART_TAGS` below) and a vision model through Ollama.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from sidecar.assist.ollama_client import ModelRef, OllamaAssistant
from sidecar.dataprep.tagger import Wd14Tagger, find_taggers, taggers_dir, where_to_put
from sidecar.assist.tags import FLIP_TAGS, key
from sidecar.config import Settings
from sidecar.dataprep.captions_table import PROPOSED, Row, is_confirmed, read_table, sources, write_table
from sidecar.dataprep.files import CAPTION_PARTS, open_image, require_dir
from sidecar.errors import DatasetInvalid, TaggerInvalid
from sidecar.userfiles import image_file_problem

# Which tagger tags make which caption part, best first: the part is the highest-scoring tag of its list
# over the general threshold (the list order breaks ties). Tags outside these lists are shown as
# evidence but never enter a caption; a part no tag fits stays empty for the artist to fill.
PART_TAGS: dict[str, tuple[str, ...]] = {
    "framing": ("full body", "cowboy shot", "upper body", "lower body", "portrait", "close-up", "wide shot",
                "feet out of frame", "head out of frame"),
    "pose": ("standing", "sitting", "kneeling", "squatting", "lying", "on back", "on stomach", "walking",
             "running", "jumping", "fighting stance", "crouching", "leaning forward", "arms crossed",
             "hand on hip", "hands on hips", "arms up", "outstretched arms", "spread arms", "from behind",
             "from side", "looking back", "contrapposto"),
    "background": ("simple background", "white background", "grey background", "black background",
                   "gradient background", "transparent background", "two-tone background", "blue background",
                   "outdoors", "indoors", "city", "street", "rooftop", "forest", "sky", "night", "sunset"),
}


class Proposal(BaseModel):
    """What a proposer answers for one image (also the JSON schema the vision model is asked with)."""

    model_config = ConfigDict(extra="forbid")

    framing: str = Field("", max_length=80, pattern=r"^[^,\n]*$", description="e.g. full body, upper body")
    pose: str = Field("", max_length=80, pattern=r"^[^,\n]*$", description="e.g. standing, sitting seen from behind")
    background: str = Field("", max_length=80, pattern=r"^[^,\n]*$", description="e.g. simple white background")


@dataclass
class Proposed:
    proposal: Proposal
    evidence: list[str] = field(default_factory=list)  # the tags (with scores) or the model that gave it


class Proposer(Protocol):
    name: str

    async def propose(self, image: Path) -> Proposed: ...


class TaggerProposer:
    def __init__(self, tagger: Wd14Tagger):
        self.tagger = tagger
        self.name = f"tagger {tagger.name}"

    def _propose(self, image: Path) -> Proposed:
        tags = self.tagger.tag(open_image(image))
        general = {t.name: t.score for t in tags if t.category == 0}
        parts = {}
        for part, candidates in PART_TAGS.items():
            ranked = sorted((c for c in candidates if c in general), key=lambda c: -general[c])
            parts[part] = ranked[0] if ranked else ""
        evidence = [f"{t.name} {t.score:.2f}" + (" (character)" if t.category == 4 else "") for t in tags[:12]]
        return Proposed(Proposal(**parts), evidence)

    async def propose(self, image: Path) -> Proposed:
        return await asyncio.to_thread(self._propose, image)


VISION_ASK = """You caption training images of one anime character for a LoRA. For this image give three short
phrases without commas: the framing (full body, upper body, portrait...), the pose or action, and the
background (simple white background, city street...). Do not name or describe the character itself.
Answer with JSON only, matching the schema."""


class OllamaProposer:
    def __init__(self, assistant: OllamaAssistant, model: ModelRef):
        self.assistant = assistant
        self.model = model
        self.name = f"ollama {model.name}"

    async def propose(self, image: Path) -> Proposed:
        problem = await asyncio.to_thread(image_file_problem, image)  # the daemon's image limits, before reading
        if problem is not None:
            raise DatasetInvalid(f"{image} cannot be used: {problem}.", {"file": str(image), "reason": problem})
        data = await asyncio.to_thread(image.read_bytes)
        proposal = await self.assistant.ask(self.model, VISION_ASK, f"The image: {image.name}", Proposal,
                                            images=[data])
        return Proposed(proposal, [f"{self.model.name} ({(self.model.digest or '?')[:12]})"])


@dataclass
class ProposalRun:
    rows: list[Row]
    proposed: dict[str, Proposed] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # confirmed rows, untouched
    unfilled: dict[str, list[str]] = field(default_factory=dict)  # parts no proposal could fill
    read: dict[str, Row] = field(default_factory=dict)  # the table's rows as they were when the run began
    proposer: str = ""  # what proposed: `tagger NAME`, `ollama MODEL`


def _clean(part: str, trigger: str, flip_tag: str) -> str:
    """One phrase: no trigger word (it is put first when captions are written), no flip tag, no commas."""
    words = [w.strip() for w in part.replace("\n", " ").split(",")]
    kept = [w for w in words if w and key(w) not in {key(trigger), key(flip_tag)} | FLIP_TAGS]
    text = re.sub(rf"(?<![\w]){re.escape(trigger)}(?![\w])", " ", " ".join(kept), flags=re.IGNORECASE)
    return " ".join(text.split())


async def propose_table(folder: Path, table: Path, trigger: str, proposer: Proposer,
                        flip_tag: str = "mirrored") -> ProposalRun:
    """Propose every row that is not confirmed; the rows come back, the caller writes the table."""
    folder = require_dir(folder)
    old = {r.file: r for r in read_table(table)} if table.exists() else {}
    run = ProposalRun(rows=[], read=dict(old), proposer=proposer.name)
    for image in sources(folder):
        row = old.get(image.name) or Row(image.name)
        if is_confirmed(row):
            run.kept.append(image.name)
            run.rows.append(row)
            continue
        got = await proposer.propose(image)
        new = {part: _clean(getattr(got.proposal, part), trigger, flip_tag) for part in CAPTION_PARTS}
        hand_filled = row.status == ""  # a half-filled row the artist typed: keep their words
        values = {part: (getattr(row, part) if hand_filled and getattr(row, part) else new[part])
                  for part in CAPTION_PARTS}
        row = Row(image.name, **values, status=PROPOSED)
        run.rows.append(row)
        run.proposed[image.name] = got
        empty = [part for part in CAPTION_PARTS if not getattr(row, part)]
        if empty:
            run.unfilled[image.name] = empty
    # Rows of images no longer in the folder are kept as they are: the artist's words are not ours to drop.
    names = {r.file for r in run.rows}
    run.rows += [r for name, r in old.items() if name not in names]
    return run


def write_proposals(table: Path, run: ProposalRun) -> list[Row]:
    """Write the run's rows, except where the table changed since the run read it (the artist confirmed,
    edited or rejected a row meanwhile): that row is kept as it now is. The rows written come back."""
    now = {r.file: r for r in read_table(table)} if table.exists() else {}
    rows = [now[r.file] if r.file in now and now[r.file] != run.read.get(r.file) else r for r in run.rows]
    names = {r.file for r in rows}
    rows += [r for name, r in now.items() if name not in names]
    write_table(table, rows)
    return rows


def pick_tagger(settings: Settings, name: str | None) -> Wd14Tagger:
    found = find_taggers(settings.models_path)
    if name is not None:
        chosen = next((t for t in found if t.name == name), None)
        if chosen is None:
            raise TaggerInvalid(f"No tagger {name!r} in {taggers_dir(settings.models_path)} (found: "
                                f"{', '.join(t.name for t in found) or 'none'}); {where_to_put(settings.models_path)}.",
                                {"tagger": name})
        return Wd14Tagger(chosen)
    if not found:
        raise TaggerInvalid(f"No caption tagger in {taggers_dir(settings.models_path)}: "
                            f"{where_to_put(settings.models_path)}, or use the ollama proposer (--proposer ollama).",
                            {"folder": str(taggers_dir(settings.models_path))})
    return Wd14Tagger(found[0])


def choose_proposer(settings: Settings, proposer: str) -> str:
    """`auto`: the tagger when one is installed, else the vision model through Ollama."""
    return proposer if proposer != "auto" else ("tagger" if find_taggers(settings.models_path) else "ollama")


async def run_proposals(folder: Path, table: Path, trigger: str, flip_tag: str, proposer: str,
                        tagger_name: str | None, settings: Settings) -> ProposalRun:
    """Proposals for every row not confirmed (nothing written yet) by `proposer`: auto, tagger or ollama.
    The Ollama models are checked (pulled, able to see) before any image is looked at."""
    kind = choose_proposer(settings, proposer)
    if kind == "tagger":
        tagger = await asyncio.to_thread(pick_tagger, settings, tagger_name)
        return await propose_table(folder, table, trigger, TaggerProposer(tagger), flip_tag)
    async with OllamaAssistant(settings.ollama_url, settings.ollama_timeout) as assistant:
        model = await assistant.model(settings.vision_model)
        await assistant.require_vision(model)
        return await propose_table(folder, table, trigger, OllamaProposer(assistant, model), flip_tag)
