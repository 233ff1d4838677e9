"""`parse_model_card`: which optimizer a model card says trained the model. Pure: text in, `OptimizerInfo` out.

Sources inside one card, most specific first:

1. our own lineage block in the YAML metadata (``hf_retain_lineage``, written by `hf_retain.lineage.writer`);
2. structured lines: the "Training hyperparameters" list transformers' Trainer writes (``- optimizer: Adam with
   betas=...``, ``Use adamw_torch with ...``, ``Use OptimizerNames.ADAMW_TORCH_FUSED ...``, ``Use lion_8bit and the
   args are:``, Keras ``{'name': 'AdamWeightDecay', ...}``), Keras hyperparameter tables, ``Optimizer: AdamW``
   key/value lines and table rows, training configs quoted in the card (axolotl ``optimizer: adamw_bnb_8bit``,
   ``optim``, DeepSpeed/NeoX ``"optimizer": {"type": "Adam"}``, sentence-transformers ``optimizer_class``);
3. prose ("trained with AdamW (beta1 = 0.9, beta2 = 0.95)", "using the Muon optimizer").

False positives are the worst failure here, so prose mentions must look like an assertion about *this* model's
training: an optimizer word or hyperparameter next to the name, or a training verb before it. Mentions are dropped
in citations and bibliographies, in contrasts ("unlike Adam", "than AdamW", "compared with"), in negations, in
recommendations ("we recommend ..."), in usage/how-to sections, and for other models (a reward model, a teacher, a
critic). Among what is left, a pretraining mention beats a neutral one, which beats a fine-tuning or RL stage.

>>> info = parse_model_card("- optimizer: Use adamw_torch_fused with betas=(0.9,0.999) and epsilon=1e-08")
>>> info.name, info.variant, info.betas, info.eps
('adamw', 'adamw_torch_fused', (0.9, 0.999), 1e-08)
>>> parse_model_card("We thank Adam Roberts for comments.") is None
True
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import yaml

from hf_retain.lineage.info import OptimizerInfo, canonical_optimizer_name

__all__ = ["parse_model_card", "split_front_matter", "safe_yaml_load", "LINEAGE_KEY", "MAX_CARD_CHARS"]

LINEAGE_KEY = "hf_retain_lineage"
MAX_CARD_CHARS = 1_000_000  # a real card is < 100 kB; anything past this is ignored (bounded work on hostile input)
MAX_FRONT_MATTER_CHARS = 200_000
_MAX_LINE_CHARS = 5_000  # lines longer than this (minified blobs, base64) are not read as prose
_MAX_SENTENCE_CHARS = 4_000
_MAX_MENTIONS = 12  # optimizer-name mentions examined per sentence
_MAX_PROSE_CANDIDATES = 200  # enough to rank a real card; bounds the work on hostile ones


# ---------------------------------------------------------------------------------------------------------------
# YAML front matter
# ---------------------------------------------------------------------------------------------------------------
class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: a card's metadata never needs them and they enable alias bombs."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not allowed in model card metadata")
        return super().compose_node(parent, index)


def safe_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` without aliases; returns None for malformed or hostile YAML instead of raising."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return None


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split ``---\\n<yaml>\\n---`` metadata from the markdown body. Bad metadata gives ``{}`` (never raises)."""
    stripped = text.lstrip("\ufeff")
    if not stripped.startswith("---"):
        return {}, text
    match = re.match(r"---[ \t]*\r?\n(.*?)(?:\r?\n)---[ \t]*(?:\r?\n|$)", stripped[: MAX_FRONT_MATTER_CHARS + 8], re.S)
    if not match:
        return {}, text
    meta = safe_yaml_load(match.group(1))
    return (meta if isinstance(meta, dict) else {}), stripped[match.end():]


# ---------------------------------------------------------------------------------------------------------------
# Numbers and hyperparameters
# ---------------------------------------------------------------------------------------------------------------
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:\s*[eE]\s*[-+−]?\s*\d+)?"
_SCI = r"(?:\s*(?:×|x|\*|\\times)\s*10\s*\^?\s*\{?\s*([-−]?\d+)\s*\}?)?"


def _to_float(text: str, exponent: str | None = None) -> float | None:
    try:
        value = float(text.replace(" ", "").replace("−", "-"))
    except ValueError:
        return None
    if exponent:
        try:
            value *= 10 ** int(exponent.replace("−", "-"))
        except (ValueError, OverflowError):
            return None
    return value


def _find_betas(text: str) -> tuple[float, ...] | None:
    m = re.search(rf"betas?\s*[=:]?\s*[\(\[]\s*({_NUM})\s*,\s*({_NUM})\s*[\)\]]", text, re.I)
    if m:
        return (_to_float(m.group(1)) or 0.0, _to_float(m.group(2)) or 0.0)
    pair = r"\(\s*(?:β|\\beta|beta)_?\{?1\}?\s*,\s*(?:β|\\beta|beta)_?\{?2\}?\s*\)"
    m = re.search(pair + rf"\s*(?:=|set\s+to|of|:|are|were)\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)", text, re.I)
    if m:
        return (_to_float(m.group(1)) or 0.0, _to_float(m.group(2)) or 0.0)
    beta = r"(?:β|\\beta|beta)\s*_?\s*\{?\s*%s\s*\}?\s*\\?\)?\s*(?:=|of|:|is)\s*\\?\(?\s*"
    b1 = re.search(beta % "1" + f"({_NUM})", text, re.I)
    b2 = re.search(beta % "2" + f"({_NUM})", text, re.I)
    if b1 and b2:
        return (_to_float(b1.group(1)) or 0.0, _to_float(b2.group(1)) or 0.0)
    return None


def _find_number(text: str, pattern: str) -> float | None:
    m = re.search(pattern + rf"\s*(?:=|:|of|is|to)?\s*\\?\(?\s*({_NUM}){_SCI}", text, re.I)
    return _to_float(m.group(1), m.group(2)) if m else None


_SCHEDULES = (
    "cosine_with_min_lr", "cosine_with_restarts", "constant_with_warmup", "warmup_stable_decay", "inverse_sqrt",
    "cosine", "linear", "constant", "polynomial", "reduce_lr_on_plateau", "wsd",
)


def _find_schedule(text: str) -> str | None:
    m = re.search(r"lr_scheduler(?:_type)?\s*[:=]\s*['\"]?([A-Za-z_]+)", text)
    if m:
        return m.group(1).lower()
    lowered = text.lower()
    for phrase, name in (
        ("warmup-stable-decay", "warmup_stable_decay"), ("warmup stable decay", "warmup_stable_decay"),
        ("inverse square root", "inverse_sqrt"), ("inverse square-root", "inverse_sqrt"), ("cosine", "cosine"),
        ("trapezoidal", "warmup_stable_decay"), ("wsd", "warmup_stable_decay"), ("linear decay", "linear"),
        ("linearly decay", "linear"), ("polynomialdecay", "polynomial"), ("multi-step", "multi_step"),
        ("constant learning rate", "constant"),
    ):
        if re.search(rf"(?<![a-z]){re.escape(phrase)}", lowered):
            return name
    return None


def _hyperparameters(text: str) -> dict[str, Any]:
    return {
        "betas": _find_betas(text),
        "eps": _find_number(text, r"(?:epsilon|eps|ε|\\epsilon|\\varepsilon)"),
        "weight_decay": _find_number(text, r"weight[_ ]decay(?:_rate)?"),
        "lr": _find_number(text, r"(?:peak |maximum |max |initial |base )?(?:learning[_ ]rate|\blr\b)"),
        "schedule": _find_schedule(text),
    }


# ---------------------------------------------------------------------------------------------------------------
# Document model: lines with their section and code-block context
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Line:
    text: str
    index: int
    heading: str  # the nearest heading path, lower-case
    in_code: bool
    code_is_config: bool  # the code block looks like a training config
    code_is_citation: bool


_CITATION_HEADING = re.compile(
    r"citation|cite|bibtex|bibliograph|reference|acknowledg|paper|related work|credits", re.I)
_USAGE_HEADING = re.compile(
    r"\b(how to (?:use|get started|fine-?tune|train)|usage|quick ?start|get(?:ting)? started|inference|example|"
    r"install|deploy|serving|run(?:ning)? (?:the|locally))", re.I)
# Sections that list, compare or recommend optimizers rather than say which one trained this model.
_NON_ASSERT_HEADING = re.compile(
    r"support|available|recommend|option|choice|alternative|comparison|compar|benchmark|ablation|related|background|"
    r"what is|faq|limitation|roadmap|todo|changelog|glossary|tips|troubleshoot|optimal|suggest|best practice|"
    r"guide|cheat ?sheet", re.I)
_TRAINING_HEADING = re.compile(r"train|procedure|hyper-?param|fine-?tun|pre-?train|optimi[sz]|recipe|config", re.I)
_CONFIG_KEYS = re.compile(
    r"^\s*[\"']?(learning_rate|lr_scheduler(?:_type)?|num_(?:train_)?epochs|micro_batch_size|gradient_accumulation_steps|"
    r"warmup_(?:steps|ratio)|per_device_train_batch_size|weight_decay|base_model|max_steps|train_batch_size|"
    r"sequence_len|batch_size|lora_r|max_grad_norm|seed|lr|optim|optimizer)[\"']?\s*[:=]", re.I | re.M)


def _strip_markup(line: str) -> str:
    line = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", line)  # images
    line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)  # links -> text
    line = re.sub(r"<[^>]{1,200}>", " ", line)  # html tags
    line = line.replace("**", "").replace("__", "")
    return line


def _document(body: str) -> list[_Line]:
    raw_lines = body.splitlines()
    lines: list[_Line] = []
    headings: list[tuple[int, str]] = []
    in_code = False
    block: list[int] = []
    fence = ""

    def close_block() -> None:
        text = "\n".join(lines[i].text for i in block)
        is_citation = bool(re.search(r"@\w+\s*\{|\btitle\s*=\s*\{", text))
        is_config = len(set(m.group(1).lower() for m in _CONFIG_KEYS.finditer(text))) >= 2
        for i in block:
            lines[i].code_is_citation = is_citation
            lines[i].code_is_config = is_config

    for index, raw in enumerate(raw_lines):
        text = raw[:_MAX_LINE_CHARS]
        stripped = text.strip()
        fence_match = re.match(r"^(```+|~~~+)", stripped)
        if fence_match:
            if not in_code:
                in_code, fence, block = True, fence_match.group(1)[:3], []
                lines.append(_Line(text, index, _heading_text(headings), True, False, False))
                block.append(len(lines) - 1)
                continue
            if stripped.startswith(fence):
                in_code = False
                lines.append(_Line(text, index, _heading_text(headings), True, False, False))
                block.append(len(lines) - 1)
                close_block()
                continue
        if not in_code:
            h = re.match(r"^(#{1,6})\s+(.*)$", stripped)
            bold_heading = re.match(r"^\*\*([^*]{2,80})\*\*:?$", stripped)
            if h or bold_heading:
                level = len(h.group(1)) if h else 7
                title = (h.group(2) if h else bold_heading.group(1)).strip().lower()  # type: ignore[union-attr]
                headings = [(lvl, t) for lvl, t in headings if lvl < level] + [(level, title)]
        lines.append(_Line(text, index, _heading_text(headings), in_code, False, False))
        if in_code:
            block.append(len(lines) - 1)
    if in_code:
        close_block()
    return lines


def _heading_text(headings: list[tuple[int, str]]) -> str:
    return " / ".join(t for _, t in headings)


# ---------------------------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    raw: str
    evidence: str
    kind: str  # lineage | trainer | keras | keyvalue | config | prose
    stage: str  # pretrain | train | finetune | posttrain
    position: int
    hyper: dict[str, Any]
    score: float

    def family(self) -> str:
        return canonical_optimizer_name(self.raw)


_PLACEHOLDER = re.compile(r"^(?:\[?more information needed\]?|none|null|n/?a|nan|tbd|todo|unknown|default|auto|"
                          r"\?+|-+|_+|false|true|\{\{.*\}\}|\d.*)$", re.I)

# Optimizer names as written in prose. Longest first so "AdamW" is not read as "Adam".
_PROSE_NAMES = (
    r"MuonClip|NorMuon|Muon|AdamWeightDecay|Adam[- ]?W|Adam-mini|AdaFactor|Adafactor|ADAFACTOR|AdEMAMix|AdaLomo|LOMO|"
    r"GaLore|Sophia-?G?|Lion|LAMB|Lamb|SGD|Adagrad|AdaGrad|RMSProp|RMSprop|Shampoo|SOAP|LARS|NovoGrad|AdaBelief|"
    r"RAdam|NAdam|Adamax|AdaMax|CAME|Adan|ADAMW|ADAM|LION|MUON|SOPHIA|adamw|adam|sgd|adafactor|muon|lion|Adam"
)
_PROSE_NAME_RE = re.compile(rf"(?<![\w\-/.@])({_PROSE_NAMES})(?![\w\-/@]|\.\w)")
# Names that are also common words or first names: need an optimizer word right next to them.
_AMBIGUOUS = {"adam", "lion", "lamb", "sophia", "sophiag", "soap", "lars", "adan", "came", "lomo", "muon", "sgd",
              "shampoo"}

_OPT_WORD = r"optimi[sz](?:er|ers|ation|ing|ed)"
_HP_WORD = (r"(?:β|\\beta|beta[_ ]?[12s]?\b|betas|epsilon|ε|\\epsilon|learning[ -]rate|\blr\b|weight[ -]decay|momentum|"
            r"warm-?up|batch size|gradient clipping|clip(?:ping)?)")
_AFTER_STRONG = re.compile(
    rf"^\s*(?:\([^)]{{0,80}}\)\s*)?(?:[-–,:]\s*)?(?:{_OPT_WORD}|with\s+(?:a\s+|the\s+)?(?:{_HP_WORD}|default|"
    rf"hyper-?parameters?|decoupled)|\(\s*(?:{_HP_WORD}|lr\s*=)|\s*\(\s*{_NUM}\s*,)",
    re.I)
_BEFORE_ASSERT = re.compile(
    r"(?:optimi[sz]ed|optimi[sz]er(?:\s+(?:used|is|was|:|=))?|trained|pre-?trained|fine-?tuned|finetuned|train(?:ing)?|"
    r"uses?|used|using|with|via|adopts?|adopted|employs?|employed|appl(?:y|ies|ied)|by|chose|choose|selected|"
    r"based\s+on|built\s+on|powered\s+by|thanks\s+to|leverag\w+|utili[sz]\w+|"
    r"switched to|relies on|is|was|were|:|=)\s+(?:(?:the|a|an|our|standard|vanilla|default|fused|distributed|"
    r"8-?bit|paged|pytorch|torch|its|their|decoupled|plain)\s+){0,3}$", re.I)
_CONTRAST_BEFORE = re.compile(
    r"(?:unlike|instead\s+of|rather\s+than|compared?\s+(?:to|with|against)|comparing|comparison\s+(?:to|with|of)|"
    r"versus|vs\.?|than|over|outperform\w*|replac\w*|alternative\s+to|relative\s+to|in\s+contrast\s+to|"
    r"as\s+opposed\s+to|beats?|against|baselines?|match(?:es|ing)?|like|such\s+as|e\.g\.,?|including|or|and|from|"
    r"than\s+the|between)\s+(?:(?:the|a|an|standard|traditional|conventional|vanilla|plain|popular|common|"
    r"widely[- ]used)\s+){0,3}$", re.I)
_NEGATION_BEFORE = re.compile(r"(?:without|not|no|never|n't|nor|neither|drop(?:ped)?|remov\w+)\s+(?:\w+\s+){0,2}$",
                              re.I)
_NON_ASSERT_SENTENCE = re.compile(
    r"\b(?:we\s+recommend|recommended|you\s+(?:can|could|may|might|should)|we\s+suggest|suggested|feel\s+free|"
    r"can\s+be\s+(?:fine-?tuned|trained)|should\s+be|for\s+example|e\.g\.|if\s+you|try\s+(?:using|with)|"
    r"consider\s+using|future\s+work|we\s+plan|will\s+be|ablation|we\s+(?:also\s+)?(?:compare|compared|ablate))\b",
    re.I)
_OTHER_MODEL = re.compile(
    r"\b(?:reward\s+model|(?-i:RMs?\b)|critic|value\s+(?:model|head|network|function)|teacher(?:\s+model)?|"
    r"discriminator|judge\s+model|classifier\s+head|draft\s+model|vision\s+encoder|image\s+encoder|"
    r"text\s+encoder|vae|tokenizer)\b", re.I)
_POSTTRAIN = re.compile(
    r"\b(?:dpo|ppo|rlhf|rlaif|grpo|kto|orpo|simpo|preference\s+(?:optimi[sz]ation|tuning|learning)|alignment|"
    r"reinforcement\s+learning|\brl\b|post-?training|policy)\b", re.I)
_FINETUNE = re.compile(
    r"\b(?:fine-?tun\w*|finetun\w*|sft|supervised|instruction[- ]tun\w*|instruct(?:ion)?[- ]?tuning|"
    r"downstream|adapter|lora|qlora|glue|squad|task-specific|continued\s+pre-?training)\b", re.I)
_PRETRAIN = re.compile(
    r"\b(?:pre-?train\w*|from\s+scratch|\d+(?:\.\d+)?\s*(?:[tb]|trillion|billion)\s+tokens|"
    r"base\s+model\s+(?:was|is)\s+trained)\b", re.I)


def _stage(sentence: str, heading: str) -> str | None:
    """pretrain/train/finetune/posttrain, or None for a sentence about another model (reward model, teacher...)."""
    if _OTHER_MODEL.search(sentence):
        return None
    for text in (sentence, heading):
        if _PRETRAIN.search(text) and not re.search(r"continued\s+pre-?train", text, re.I):
            return "pretrain"
        if _POSTTRAIN.search(text):
            return "posttrain"
        if _FINETUNE.search(text):
            return "finetune"
    if _OTHER_MODEL.search(heading):
        return None
    return "train"


_STAGE_RANK = {"pretrain": 3, "train": 2, "finetune": 1, "posttrain": 0}


def _sentences(paragraph: str) -> list[tuple[int, str]]:
    """Split a paragraph into sentences (offset, text) without breaking 1e-4, e.g., et al., 0.9 or URLs."""
    out: list[tuple[int, str]] = []
    start = 0
    for m in re.finditer(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bet al)(?<!\bvs)(?<!\bFig)(?<!\bEq)(?<!\d)"
                         r"[.!?](?=\s+[A-Z(\[*-]|\s*$)|;(?=\s)"
                         r"|\n\s*\n|\n\s*[-*•]\s|\n\s*\d+\.\s|\n\s*\|", paragraph):
        end = m.end()
        if paragraph[start:end].strip():
            out.append((start, paragraph[start:end]))
        start = end
    if paragraph[start:].strip():
        out.append((start, paragraph[start:]))
    return out


# ---- structured extractors -------------------------------------------------------------------------------------
_TRAINER_LINE = re.compile(r"^\s*[-*]\s*`?optimi[sz]er`?\s*:\s*(.+)$", re.I)
_KV_LINE = re.compile(
    r"^\s*(?:[-*•]\s*)?(?:\|\s*)?`?\"?'?(?:optimi[sz]er(?:[ _](?:name|type|class|used|choice))?|optim)\"?'?`?\s*"
    r"(?:\||:|=)\s*(.+?)\s*$", re.I)
_TABLE_ROW = re.compile(r"^\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|")
_KERAS_NAME = re.compile(r"['\"](?:class_name|name)['\"]\s*:\s*['\"](?:Custom>|keras>)?([A-Za-z][\w.]*)['\"]")
_KERAS_NOT_OPTIMIZER = re.compile(
    r"decay|warmup|schedule|cosine|exponential|piecewise|polynomial|inverse|lossscale|mixed|policy|none", re.I)
_ST_CLASS = re.compile(r"[\"']?optimizer_class[\"']?\s*:\s*[\"']?<class\s+'([\w.]+)'>")
_DS_OPT = re.compile(r"[\"']optimizer[\"']\s*:\s*\{\s*[\"'](?:type|name)[\"']\s*:\s*[\"']([\w\-.]+)[\"']")


def _value_name(value: str) -> str | None:
    """The optimizer name inside a structured value (``Use X with betas ...``, ``X with betas``, ``{'name': X}``...)."""
    value = _strip_markup(value).strip().strip("`").strip()
    if "|" in value and not value.startswith("{"):
        value = value.split("|", 1)[0].strip()  # a table row: the first cell after the key
    if not value:
        return None
    if value.startswith("{") or "'name'" in value or '"name"' in value:
        for m in _KERAS_NAME.finditer(value):
            name = m.group(1)
            if not canonical_optimizer_name(name).startswith("other:") or not _KERAS_NOT_OPTIMIZER.search(name):
                return name
        return None
    m = re.match(r"<class\s+'([\w.]+)'>", value)
    if m:
        return m.group(1).rsplit(".", 1)[-1]
    m = re.match(r"^Use\s+([\w.\-]+)", value, re.I)
    if m:
        return m.group(1)
    value = value.rstrip(",;").strip().strip("\"'").strip()
    m = re.match(r"^([A-Za-z][\w.\-]*)(?:\s*\(|\s+with\b|\s*,|\s*;|\s*$|\s+\(|\s+optimi[sz]er\b|\s+[-–]\s)", value)
    if m and not _PLACEHOLDER.match(m.group(1)):
        return m.group(1)
    names = [m.group(1) for m in _PROSE_NAME_RE.finditer(value)]  # "the AdamW optimizer", "AdamW (beta1=0.9)"
    if len({canonical_optimizer_name(n) for n in names}) == 1 and not re.search(r"\bor\b|\||\bvs\b", value):
        return names[0]
    return None  # none, or alternatives ("adamw" or "sgd"): not a statement of what was used


def _plausible_name(name: str) -> bool:
    if _PLACEHOLDER.match(name) or len(name) > 60:
        return False
    family = canonical_optimizer_name(name)
    if not family.startswith("other:"):
        return True
    # an unknown single identifier is accepted only if it looks like an optimizer id (has letters, no spaces)
    return (bool(re.fullmatch(r"[A-Za-z][\w.\-]{1,40}", name)) and not re.fullmatch(r"[a-z]+", name.lower())) or \
        bool(re.search(r"opt|grad|adam|prop", name, re.I))


def _structured_candidates(lines: list[_Line]) -> list[_Candidate]:
    out: list[_Candidate] = []
    keras_table: dict[str, str] | None = None
    for pos, line in enumerate(lines):
        text = line.text
        if line.code_is_citation or _CITATION_HEADING.search(line.heading):
            continue
        listing = bool(_NON_ASSERT_HEADING.search(line.heading))
        usage = bool(_USAGE_HEADING.search(line.heading)) and not re.search(r"train|hyper", line.heading, re.I)
        if line.in_code and (usage or listing or not line.code_is_config):
            # code blocks count only when they look like a training config (axolotl/trainer/deepspeed dumps)
            for regex in (_ST_CLASS, _DS_OPT):
                m = regex.search(text)
                if m and not usage:
                    out.append(_make(m.group(1), text, "config", line, pos, _context(lines, pos)))
            continue
        text = text.replace("**", "").replace("__", "")  # "- **Optimizer:** AdamW" is a key/value line too
        m = _TRAINER_LINE.match(text)
        if m and not line.in_code:
            value = m.group(1)
            if value.strip().startswith("{") and not value.rstrip().endswith("}"):
                value = value + " " + " ".join(lines[j].text for j in range(pos + 1, min(pos + 4, len(lines))))
            name = _value_name(value)
            if name and _plausible_name(name):
                kind = "keras" if value.strip().startswith("{") else "trainer" if re.match(
                    r"\s*(?:Use\s+\S+\s+(?:with\s+betas|and\s+the\s+args)|\w+\s+with\s+betas=\(|Adafactor\s*$)",
                    value) else "keyvalue"
                hyper = _trainer_hyper(value, lines, pos, keras=kind == "keras")
                out.append(_make(name, text.strip(), kind, line, pos, "", hyper=hyper))
                continue
        for regex in (_ST_CLASS, _DS_OPT):
            m = regex.search(text)
            if m:
                out.append(_make(m.group(1), text, "config", line, pos, _context(lines, pos)))
        row = _TABLE_ROW.match(text)
        if row:
            key, value = row.group(1).strip().strip("`*").lower(), row.group(2).strip()
            if key in ("hyperparameters", "hyperparameter", "parameter", "name", "key") and value.lower() in (
                    "value", "values", "setting"):
                keras_table = {}
                continue
            if keras_table is not None:
                keras_table[key] = value
                if key == "name" and _plausible_name(value.strip("`*")):
                    out.append(_make(value.strip("`*"), text.strip(), "keras", line, pos, "",
                                     hyper=_keras_table_hyper(lines, pos)))
                    continue
        else:
            keras_table = None
        m = _KV_LINE.match(text)
        if m and not _TRAINER_LINE.match(text) and not listing:
            constructor = re.match(r"^\s*[A-Za-z][\w.]*\s*\(", m.group(1))
            if line.in_code and constructor and not _TRAINING_HEADING.search(line.heading):
                continue  # `optimizer = Lion(...)` in a snippet outside a training section: an example
            name = _value_name(m.group(1))
            if name and _plausible_name(name):
                kind = "config" if line.in_code else "keyvalue"
                out.append(_make(name, text.strip(), kind, line, pos, _context(lines, pos)))
            continue
        m = re.search(r"\boptim\s*=\s*[\"']([\w\-]+)[\"']", text)
        if m and line.in_code and not usage and "#" not in text[: m.start()]:
            out.append(_make(m.group(1), text.strip(), "config", line, pos, _context(lines, pos)))
    return out


def _context(lines: list[_Line], pos: int, radius: int = 12) -> str:
    lo, hi = max(0, pos - radius), min(len(lines), pos + radius + 1)
    return "\n".join(lines[i].text for i in range(lo, hi) if lines[i].in_code == lines[pos].in_code)


def _trainer_hyper(value: str, lines: list[_Line], pos: int, keras: bool) -> dict[str, Any]:
    hyper: dict[str, Any] = {"betas": None, "eps": None, "weight_decay": None, "lr": None, "schedule": None}
    if keras:
        b1 = re.search(rf"'beta_1'\s*:\s*({_NUM})", value)
        b2 = re.search(rf"'beta_2'\s*:\s*({_NUM})", value)
        if b1 and b2:
            hyper["betas"] = (_to_float(b1.group(1)), _to_float(b2.group(1)))
        hyper["eps"] = _find_number(value, r"'epsilon'\s*:")
        hyper["weight_decay"] = _find_number(value, r"'weight_decay(?:_rate)?'\s*:")
        hyper["lr"] = _find_number(
            value, r"'(?:initial_)?learning_rate'\s*:\s*(?:\{[^{]*?'initial_learning_rate'\s*:)?")
    else:
        hyper["betas"] = _find_betas(value)
        hyper["eps"] = _find_number(value, r"epsilon")
        hyper["weight_decay"] = _find_number(value, r"weight_decay")
    # the rest of the bulleted hyperparameter list around the optimizer line
    lo, hi = max(0, pos - 15), min(len(lines), pos + 15)
    for j in range(lo, hi):
        t = lines[j].text
        if hyper["lr"] is None:
            m = re.match(rf"^\s*[-*]\s*learning_rate\s*:\s*({_NUM})", t)
            if m:
                hyper["lr"] = _to_float(m.group(1))
        if hyper["schedule"] is None:
            m = re.match(r"^\s*[-*]\s*lr_scheduler_type\s*:\s*([\w.]+)", t)
            if m:
                hyper["schedule"] = m.group(1).split(".")[-1].lower()
    return hyper


def _keras_table_hyper(lines: list[_Line], pos: int) -> dict[str, Any]:
    rows: dict[str, str] = {}
    for j in range(pos, min(len(lines), pos + 30)):
        row = _TABLE_ROW.match(lines[j].text)
        if not row:
            break
        rows[row.group(1).strip().lower()] = row.group(2).strip()
    b1, b2 = _to_float(rows.get("beta_1", "x")), _to_float(rows.get("beta_2", "x"))
    return {
        "betas": (b1, b2) if b1 is not None and b2 is not None else None,
        "eps": _to_float(rows.get("epsilon", "x")),
        "weight_decay": _to_float(rows.get("weight_decay", rows.get("weight_decay_rate", "x"))),
        "lr": _to_float(rows.get("learning_rate", "x")),
        "schedule": None,
    }


_KIND_SCORE = {"lineage": 1.0, "trainer": 0.95, "keras": 0.95, "config": 0.9, "keyvalue": 0.9, "prose": 0.75}


def _make(name: str, evidence: str, kind: str, line: _Line, pos: int, context: str,
          hyper: dict[str, Any] | None = None) -> _Candidate:
    stage = _stage(evidence, line.heading) or "train"
    if hyper is None:
        hyper = _hyperparameters(context or evidence)
    return _Candidate(name, evidence.strip()[:300], kind, stage, pos, hyper, _KIND_SCORE[kind])


# ---- prose extractor -------------------------------------------------------------------------------------------
def _prose_candidates(lines: list[_Line]) -> list[_Candidate]:
    out: list[_Candidate] = []
    # group consecutive non-code lines of the same section into paragraphs
    para: list[_Line] = []
    for line in [*lines, None]:
        prose = line is not None and not line.in_code and bool(line.text.strip())
        if prose and (not para or (para[-1].heading == line.heading and line.index == para[-1].index + 1)):
            para.append(line)
            continue
        if para and len(out) < _MAX_PROSE_CANDIDATES:
            out.extend(_prose_paragraph(para))
        para = [line] if line is not None and not line.in_code and line.text.strip() else []
    return out


def _prose_paragraph(para: list[_Line]) -> list[_Candidate]:
    heading = para[0].heading
    if _CITATION_HEADING.search(heading) or _NON_ASSERT_HEADING.search(heading) or (
            _USAGE_HEADING.search(heading) and not re.search(r"train|hyper", heading, re.I)):
        return []
    text = "\n".join(_strip_markup(line.text) for line in para)
    out: list[_Candidate] = []
    for offset, sentence in _sentences(text):
        if len(out) >= _MAX_PROSE_CANDIDATES:
            break
        if len(sentence) > _MAX_SENTENCE_CHARS or not _PROSE_NAME_RE.search(sentence) or _looks_like_reference(
                sentence):
            continue  # a "sentence" this long is a blob (tables, logs, junk), not prose
        mentions = list(itertools.islice(_PROSE_NAME_RE.finditer(sentence), _MAX_MENTIONS))
        found = [m for m in mentions if _asserted(sentence, m)]
        if not found:
            continue
        if len({canonical_optimizer_name(m.group(1)) for m in mentions}) > 1 and re.search(
                r"\b(?:or|either)\b", sentence):
            continue  # "adamw" or "sgd": a list of choices
        families = {canonical_optimizer_name(m.group(1)) for m in found}
        if len(families) > 1 and re.search(r"compar|versus|\bvs\b|than|outperform|ablat|baseline|either", sentence,
                                           re.I):
            found = [m for m in found if _BEFORE_ASSERT.search(sentence[max(0, m.start() - 60): m.start()])
                     and not re.search(r"\b(?:and|or)\s+$", sentence[max(0, m.start() - 8): m.start()])]
            if len({canonical_optimizer_name(m.group(1)) for m in found}) != 1:
                continue
        if _NON_ASSERT_SENTENCE.search(sentence):
            continue
        stage = _stage(sentence, heading)
        if stage is None:
            continue
        line_pos = para[0].index + text[:offset].count("\n")
        hyper = _hyperparameters(sentence)
        strong = bool(re.search(_OPT_WORD, sentence, re.I)) and _PRETRAIN.search(sentence) is not None
        m = found[0]
        out.append(_Candidate(m.group(1), " ".join(sentence.split())[:300], "prose", stage, line_pos, hyper,
                              0.85 if strong else 0.75))
    return out


def _looks_like_reference(sentence: str) -> bool:
    s = sentence.strip()
    if re.search(r"Adam\s*:\s*A\s+Method\s+for\s+Stochastic", s, re.I):
        return True
    if re.search(r"\b(?:arXiv|doi|proceedings|conference|journal|preprint|ICLR|NeurIPS|ICML)\b", s) and re.search(
            r"\b(?:19|20)\d\d\b", s) and not re.search(r"\b(?:we|our|was|were|is)\b", s, re.I):
        return True
    return bool(re.match(r"^\s*(?:\[\d+\]|\d+\.)\s+[A-Z][\w\-]+,\s+[A-Z]", s))


def _asserted(sentence: str, m: re.Match[str]) -> bool:
    """Is this name mention a statement that the optimizer was used (not a contrast, negation, citation, name)?"""
    name = m.group(1)
    before = sentence[max(0, m.start() - 60): m.start()]
    after = sentence[m.end(): m.end() + 80]
    if _CONTRAST_BEFORE.search(before) and not re.search(r"(?:trained|used|using|with|optimi[sz]er)\s+(?:the\s+)?$",
                                                         before, re.I):
        return False
    if _NEGATION_BEFORE.search(before):
        return False
    if re.match(r"^\s*(?:-\s*)?(?:like|style|based|variant|family|type)\b", after, re.I):
        return False
    if re.match(r"^\s*:\s*A\s+Method", after):
        return False
    cited = re.match(r"^\s*(?:et\s+al|\(\s*(?:19|20)\d\d\s*\))", after) or re.match(
        r"^[\s,]*\(?\s*(?:19|20)\d\d\b", after)
    if cited and not _AFTER_STRONG.match(after):
        return False  # "Adam et al." or "Lion (2023)": a citation of a paper, not of a setup
    lowered = re.sub(r"[- ]", "", name.lower())
    after_strong = bool(_AFTER_STRONG.match(after))
    before_assert = bool(_BEFORE_ASSERT.search(before))
    if lowered in _AMBIGUOUS or name in ("Adam",):
        # "Adam Roberts", "Lion King", "muon detector": a capitalised word right after is a surname/noun
        if re.match(r"^\s+[A-Z][a-z]+\b", after) and not re.match(r"^\s+(?:Optimi[sz]er|With|W)\b", after):
            return False
        if lowered == "muon" and re.search(r"detector|neutrino|particle|physics|collider|decay\s+of", sentence, re.I):
            return False
        if lowered == "sgd" and not (after_strong or before_assert or re.search(_OPT_WORD, sentence, re.I)):
            return False
        trained_with = re.search(r"(?:train\w*|optimi[sz]ed|fine-?tun\w*)\s+(?:\S+\s+){0,4}?(?:with|using|via|by)\s+"
                                 r"(?:the\s+|an?\s+)?$", before, re.I)
        if not after_strong and not trained_with and not (
                before_assert and re.search(rf"{_OPT_WORD}|{_HP_WORD}", sentence, re.I)):
            return False
        return not name.islower() or after_strong or bool(re.search(_OPT_WORD, before, re.I))
    return after_strong or (before_assert and bool(
        re.search(rf"{_OPT_WORD}|{_HP_WORD}|train|fine-?tun|\bus(?:e|ed|es|ing)\b", sentence, re.I)))


# ---------------------------------------------------------------------------------------------------------------
# Lineage block (our own metadata)
# ---------------------------------------------------------------------------------------------------------------
def _from_lineage_block(meta: dict[str, Any]) -> OptimizerInfo | None:
    block = meta.get(LINEAGE_KEY)
    if not isinstance(block, dict):
        return None
    opt = block.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("name"), str) or not opt["name"].strip():
        return None

    def num(key: str) -> float | None:
        value = opt.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    betas = opt.get("betas")
    betas_t = tuple(float(b) for b in betas) if isinstance(betas, (list, tuple)) and all(
        isinstance(b, (int, float)) for b in betas) and betas else None
    schedule = block.get("lr_schedule", opt.get("schedule"))
    weight_decay = num("weight_decay")
    if weight_decay is None and isinstance(block.get("weight_decay"), (int, float)):
        weight_decay = float(block["weight_decay"])
    return OptimizerInfo(
        name=canonical_optimizer_name(opt["name"]), betas=betas_t, eps=num("eps"), weight_decay=weight_decay,
        lr=num("lr"), schedule=schedule if isinstance(schedule, str) else None,
        source="hf_retain lineage block (model card metadata)",
        evidence=f"{LINEAGE_KEY}.optimizer = {opt.get('class') or opt['name']}", confidence=1.0,
        variant=str(opt.get("variant") or opt.get("class") or opt["name"]), stage="train",
    )


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def parse_model_card(text: str) -> OptimizerInfo | None:
    """Which optimizer a model card says trained the model, or None when the card names none.

    Pure and bounded: no I/O, reads at most `MAX_CARD_CHARS` characters, never raises on odd input (bad YAML,
    binary junk, giant lines). ``betas``/``eps``/``lr``/``schedule``/``weight_decay`` are filled when the same
    line or sentence gives them.

    >>> card = "## Training\\nWe pretrain with the AdamW optimizer (beta1 = 0.9, beta2 = 0.95) on 2T tokens."
    >>> info = parse_model_card(card)
    >>> info.name, info.betas, info.stage
    ('adamw', (0.9, 0.95), 'pretrain')
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_model_card expects the card text as str, got {type(text).__name__}; read the file "
                        "first or use hf_retain.read_pretraining_optimizer(path_or_repo_id).")
    text = text[:MAX_CARD_CHARS].replace("\x00", "")
    meta, body = split_front_matter(text)
    lineage = _from_lineage_block(meta)
    if lineage is not None:
        return lineage
    try:
        lines = _document(body)
        candidates = _structured_candidates(lines)
        if not candidates:
            candidates = _prose_candidates(lines)
    except RecursionError:  # pragma: no cover - regexes above are linear; defensive only
        return None
    return _choose(candidates)


def _choose(candidates: list[_Candidate]) -> OptimizerInfo | None:
    if not candidates:
        return None
    # Trainer-generated lines reflect what actually ran; prefer them, then other structured lines, then prose.
    kind_rank = {"lineage": 5, "trainer": 4, "keras": 4, "config": 3, "keyvalue": 3, "prose": 1}
    best = max(candidates, key=lambda c: (kind_rank[c.kind], _STAGE_RANK[c.stage], c.score, -c.position))
    family = best.family()
    same = [c for c in candidates if c.family() == family]
    hyper = dict(best.hyper)
    for c in same:  # fill gaps from other mentions of the same optimizer
        for key, value in c.hyper.items():
            if hyper.get(key) is None and value is not None:
                hyper[key] = value
    conflicting = {c.family() for c in candidates if kind_rank[c.kind] == kind_rank[best.kind]
                   and _STAGE_RANK[c.stage] == _STAGE_RANK[best.stage]} - {family}
    if conflicting and best.kind in ("config", "keyvalue"):
        return None  # two configs naming different optimizers: a menu or a comparison, not this model's setup
    confidence = best.score - (0.2 if conflicting else 0.0) - (0.15 if best.stage in ("finetune", "posttrain")
                                                              and best.kind == "prose" else 0.0)
    betas = hyper.get("betas")
    return OptimizerInfo(
        name=family,
        betas=tuple(float(b) for b in betas) if betas and all(b is not None for b in betas) else None,
        eps=hyper.get("eps"), weight_decay=hyper.get("weight_decay"), lr=hyper.get("lr"),
        schedule=hyper.get("schedule"),
        source=f"model card ({_SOURCE_NAMES[best.kind]})", evidence=best.evidence, confidence=round(confidence, 2),
        variant=best.raw, stage=best.stage,
    )


_SOURCE_NAMES = {
    "lineage": "hf_retain lineage block", "trainer": "Trainer training-hyperparameters list",
    "keras": "Keras optimizer config", "config": "training config quoted in the card",
    "keyvalue": "optimizer field", "prose": "prose",
}
