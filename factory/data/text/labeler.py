"""CheXpert-style rule labeler: mention extraction, negation and uncertainty, then aggregation.

Each sentence is cut into clauses at scope breakers (";", "but", "although", "there is", ...).
In a clause, every mention of a finding is classified, in CheXpert's order of precedence:

1. "cannot exclude X" / "X is not excluded" (negation words that express doubt) -> uncertain (-1)
2. a negation cue ("no", "without", "resolved", "X is not seen") in scope    -> negative (0)
3. an uncertainty cue ("possible", "may", "likely", "X vs Y", "?") in scope  -> uncertain (-1)
4. otherwise                                                                  -> positive (1)

A cue before a mention reaches forward to the end of its clause or the next copula ("No effusion
is seen, and mild edema" stops at "is"); a cue after a mention ("pneumothorax has resolved")
reaches back through its comma-separated segment and any preceding segments that are a bare list
of findings ("effusion, pneumothorax and consolidation are not seen"). Some phrases are negative
mentions in themselves ("heart size is normal", "sharp costophrenic angles").

Aggregation over mentions (CheXpert): any positive -> 1, else any uncertain -> -1, else 0; a finding
never mentioned has no key. "No Finding" is 1 when no finding other than Support Devices is
positive or uncertain. Nothing here raises on odd text: model-written reports are labelled too.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from factory.data.labels import CXR_LABELS, Finding
from factory.data.text.vocab import split_sentences

NO_FINDING = "No Finding"
_NOT_PATHOLOGY = {NO_FINDING, "Support Devices"}

_HEART = (r"(?:heart(?: size)?|size of the heart|cardiac (?:silhouette|size|shadow|contours?)"
          r"|cardiomediastinal (?:and hilar )?(?:silhouette|contours?)"
          r"|cardiac and mediastinal (?:silhouettes?|contours?))")
_VERB = r"(?:\s+(?:is|are|appears?|remains?|seems?|looks?))?"
# Up to three modifier words between subject and predicate, never a negation or a new clause.
_FILL = r"(?:\s+(?!(?:not|no|normal|and|but|with|without)\b)[a-z-]+){0,3}?"

_MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"\bcardiomegaly\b", r"\bcardiac enlargement\b",
        r"\benlarged (?:heart|cardiac silhouette|cardiac shadow)\b",
        r"\benlargement of the (?:heart|cardiac silhouette|cardiac shadow)\b",
        rf"\b{_HEART}{_VERB}{_FILL}\s+(?:enlarged|increased|prominent)\b",
        rf"\b{_HEART}{_VERB}\s+borderline\b",
    ),
    "Pleural Effusion": (
        r"\b(?<!pericardial )effusions?\b", r"\bpleural (?:or|and) pericardial effusions?\b",
        r"\bpleural fluid\b", r"\bhydro(?:pneumo)?thora(?:x|ces)\b", r"\b(?:layering|fissural) fluid\b",
        r"\bblunt(?:ing|ed)\s+(?:of\s+)?(?:the\s+)?(?:(?:left|right|bilateral|both)\s+)?costophrenic\b",
        r"\bcostophrenic (?:angle )?blunting\b",
    ),
    "Pneumothorax": (r"\b(?:hydro)?pneumothora(?:x|ces)\b", r"\bptx\b"),
    "Consolidation/Pneumonia": (
        r"\bconsolidat(?:ion|ions|ive|ed)\b", r"\b(?:broncho)?pneumonias?\b", r"\bpneumonic\b",
        r"\binfiltrat(?:e|es|ion|ive)\b", r"\binfection\b", r"\binfectious process\b", r"\baspiration\b",
        r"\b(?:airspace|air-space|air space|alveolar|parenchymal|focal|patchy|confluent|ill-defined)\s+"
        r"(?:airspace\s+)?(?:opacit(?:y|ies)|opacification|disease)\b",
    ),
    "Edema": (
        r"\b(?<!subcutaneous )(?<!soft tissue )(?<!soft-tissue )edema\b", r"\bcongestion\b",
        r"\b(?:congestive )?heart failure\b", r"\bchf\b", r"\bfluid overload\b", r"\bkerley\b",
        r"\bcephalization\b", r"\b(?:vascular|venous) engorgement\b", r"\bperihilar haz(?:e|iness)\b",
    ),
    "Nodule/Mass": (
        r"\bnodul(?:e|es|ar)\b", r"\bmass(?:es)?\b(?!\s+effect)",
        r"\b(?:lung|pulmonary|cavitary|spiculated)\s+lesions?\b",
        r"\b(?:neoplasm|tumou?r|carcinoma|malignancy|metastas[ie]s|metastatic disease)\b",
    ),
    "Atelectasis": (r"\batelecta(?:sis|ses|tic)\b", r"\bvolume loss\b", r"\bcollapsed?\b"),
    "Support Devices": (
        r"\bpiccs?\b",
        r"\b(?:endotracheal|tracheostomy|trach|et|chest|enteric|nasogastric|orogastric|nasoenteric|feeding|gastric"
        r"|ng|og|dobb?hoff|thoracostomy|pleural)\s+tubes?\b", r"\bett\b",
        r"\b(?:pacemakers?|pacers?|a?icds?|defibrillators?|loop recorder)\b",
        r"\b(?:pacer|pacemaker|pacing|icd|transvenous)\s+(?:leads?|wires?)\b",
        r"\bleads?\s+(?:terminat\w*|project\w*|extend\w*|in the right)\b",
        r"\b(?:central|venous|midline|ij|jugular|subclavian|arterial|dialysis|hemodialysis|swan[- ]ganz)\s+"
        r"(?:venous\s+)?(?:lines?|catheters?)\b",
        r"\bcatheters?\b", r"\bpigtail\b", r"\bport-?a-?cath\b", r"\b(?:chest|mediport|power|infusion) port\b",
        r"\bsternotomy wires?\b", r"\bsurgical clips\b", r"\bstents?\b", r"\bprosthetic valve\b",
        r"\bvalve replacement\b", r"\bballoon pump\b", r"\bimpella\b", r"\becmo\b",
        r"\b(?:support|monitoring) devices?\b", r"\b(?:lines and tubes|tubes and lines)\b",
    ),
}
# Phrases that mention a finding only to say it is absent.
_NORMAL: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        rf"\b{_HEART}{_VERB}{_FILL}\s+(?:normal|within normal limits|unremarkable|not enlarged"
        r"|(?:at the )?upper limits? of normal|top[- ]normal)\b",
        r"\bnormal (?:in size|size of the heart)\b",
        r"\bnormal (?:heart|cardiac|cardiomediastinal) (?:size|silhouette|contours?)\b",
    ),
    "Pleural Effusion": (r"\bcostophrenic angles? (?:is|are) (?:sharp|clear|preserved)\b",
                         r"\bsharp costophrenic angles?\b"),
}

_NEG_PRE = re.compile(
    r"\bno\b(?!\s+(?:(?:significant|interval|substantial|appreciable|definite|real)\s+)*"
    r"(?:change|increase|decrease|progression|improvement|worsening|difference)\b)"
    r"|\bwithout\b(?!\s+(?:(?:significant|interval)\s+)*change\b)"
    r"|\bnegative for\b|\bfree of\b|\babsence of\b|\babsent\b|\bresolved\b|\bresolution of\b"
    r"|\bremoval of\b|\brather than\b|\bclear of\b|\bnor\b|\bnever\b")
_NEG_POST = re.compile(
    r"\b(?:not|no longer)\s+(?:(?:clearly|definitely|well)\s+)?(?:seen|identified|visualized|visible|appreciated"
    r"|demonstrated|evident|present|noted|detected|apparent|observed|shown)\b"
    r"|\bresolved\b|\babsent\b|\bremoved\b|\bruled out\b|\bunlikely\b|\bhas cleared\b")
_UNC_PRE = re.compile(
    r"\bpossibl[ey]\b|\bprobabl[ey]\b|\blikely\b|\bmay\b|\bmight\b|\bcould\b|\bquestionable\b|\bquestion of\b"
    r"|\bsuspicious for\b|\bsuspicion (?:for|of)\b|\bsuspect(?:ed)?\b|\bsuggest(?:s|ive|ing|ed)?\b"
    r"|\bconcern(?:ing)? for\b|\bworrisome for\b|\bequivocal\b|\bindeterminate\b|\bborderline\b"
    r"|\b(?:evaluate|assess|eval|evaluation|assessment) for\b|\brule out\b|\br/o\b|\bpresum(?:ed|ably)\b"
    r"|\bperhaps\b|\bdifferential\b|\bversus\b|\bvs\b|\?")
_UNC_POST = re.compile(
    r"\b(?:is|are|was|were|remains?)\s+(?:also\s+)?(?:possible|likely|probable|suspected|questioned|suggested|favou?red"
    r"|a consideration|not certain)\b|\bmay be present\b|\?")
# Negation words that express doubt: CheXpert's pre-negation uncertainty, checked first.
_DOUBT = re.compile(
    r"\b(?:cannot|can not|can't|could not|difficult to|unable to|not)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|definitely\s+|totally\s+)?(?:exclude[ds]?|rule[ds]? out|ruled out)\b")
_OR = re.compile(r"^\s*,?\s*(?:or|versus|vs\.?|and/or)\s+(?:[a-z-]+\s+){0,2}$")
_BOUNDARY = re.compile(
    r"[;:]|\b(?:but|however|although|though|whereas|while|except|aside from|apart from|otherwise)\b"
    r"|(?=\bthere (?:is|are|was|were|has been|have been)\b)|\band(?= (?:the|there|heart|cardiac)\b)")
_COPULA = re.compile(r"\b(?:is|are|was|were)\b")
_LIST_WORDS = frozenset("and or the a an any left right bilateral small large moderate mild trace minimal focal "
                        "pleural pulmonary definite acute new".split())

_MENTION_RES = {label: re.compile("|".join(pats)) for label, pats in _MENTIONS.items()}
_NORMAL_RES = {label: re.compile("|".join(pats)) for label, pats in _NORMAL.items()}


class _Mention(NamedTuple):
    label: str
    start: int
    end: int
    normal: bool  # the phrase itself says "absent"


def _find_mentions(clause: str) -> list[_Mention]:
    found: list[_Mention] = []
    for label, regex in _NORMAL_RES.items():
        found += [_Mention(label, m.start(), m.end(), True) for m in regex.finditer(clause)]
    for label, regex in _MENTION_RES.items():
        for m in regex.finditer(clause):
            # A normal-phrase or a longer mention of the same finding already covers this span.
            if not any(o.label == label and o.start < m.end() and m.start() < o.end for o in found):
                found.append(_Mention(label, m.start(), m.end(), False))
    return sorted(found, key=lambda m: m.start)


def _pre_scope(clause: str, cue: re.Match) -> tuple[int, int]:
    copula = _COPULA.search(clause, cue.end())
    return cue.start(), copula.start() if copula else len(clause)


def _post_scope(clause: str, cue: re.Match, mentions: list[_Mention]) -> tuple[int, int]:
    masked = list(clause)
    for m in mentions:
        masked[m.start:m.end] = " " * (m.end - m.start)
    masked_text = "".join(masked)
    start = clause.rfind(",", 0, cue.start()) + 1
    while start > 0:
        prev = clause.rfind(",", 0, start - 1) + 1
        has_mention = any(prev <= m.start < start - 1 for m in mentions)
        if not has_mention or any(w not in _LIST_WORDS for w in masked_text[prev:start - 1].split()):
            break
        start = prev
    return start, cue.start()


def _in_pre(m: _Mention, scope: tuple[int, int]) -> bool:
    # Overlap, so that a cue inside a composite mention ("heart may be mildly enlarged") counts.
    return m.end > scope[0] and m.start < scope[1]


def _in_post(m: _Mention, scope: tuple[int, int]) -> bool:
    return scope[0] <= m.start < scope[1]


def _classify(clause: str) -> list[tuple[str, float]]:
    mentions = _find_mentions(clause)
    if not mentions:
        return []

    def scopes(pre: re.Pattern | None, post: re.Pattern | None) -> tuple[list, list]:
        return ([_pre_scope(clause, c) for c in pre.finditer(clause)] if pre else [],
                [_post_scope(clause, c, mentions) for c in post.finditer(clause)] if post else [])

    doubt = scopes(_DOUBT, _DOUBT)
    neg = scopes(_NEG_PRE, _NEG_POST)
    unc = scopes(_UNC_PRE, _UNC_POST)

    def hit(m: _Mention, pre_post: tuple[list, list]) -> bool:
        return any(_in_pre(m, s) for s in pre_post[0]) or any(_in_post(m, s) for s in pre_post[1])

    status = []
    for m in mentions:
        if m.normal:
            status.append(0.0)
        elif hit(m, doubt):
            status.append(-1.0)
        elif hit(m, neg):
            status.append(0.0)
        elif hit(m, unc):
            status.append(-1.0)
        else:
            status.append(1.0)
    # "atelectasis or pneumonia", "effusion versus thickening": undecided between the two.
    for i in range(len(mentions) - 1):
        a, b = mentions[i], mentions[i + 1]
        if b.start >= a.end and _OR.match(clause[a.end:b.start]):
            for j in (i, i + 1):
                if status[j] == 1.0:
                    status[j] = -1.0
    return [(m.label, s) for m, s in zip(mentions, status)]


def label_report(text: str) -> dict[str, float]:
    """CheXpert-style labels of a report: 1 positive, 0 negated, -1 uncertain, absent = not mentioned."""
    votes: dict[str, list[float]] = {}
    for sentence in split_sentences(str(text)):
        sentence = " ".join(sentence.lower().split())
        for clause in _BOUNDARY.split(sentence):
            for label, value in _classify(clause):
                votes.setdefault(label, []).append(value)
    labels: dict[str, float] = {}
    for label, values in votes.items():
        labels[label] = 1.0 if 1.0 in values else (-1.0 if -1.0 in values else 0.0)
    if not any(labels.get(label) in (1.0, -1.0) for label in CXR_LABELS if label not in _NOT_PATHOLOGY):
        labels[NO_FINDING] = 1.0
    return {label: labels[label] for label in CXR_LABELS if label in labels}


def label_vector(text: str) -> np.ndarray:
    """`label_report` as a float32 vector over CXR_LABELS, NaN where a finding is not mentioned."""
    labels = label_report(text)
    return np.array([labels.get(name, np.nan) for name in CXR_LABELS], dtype=np.float32)


def finding_labels(findings: list[Finding] | tuple[Finding, ...]) -> dict[str, float]:
    """The labels a study with these findings has: 1 present, 0 absent, No Finding by CheXpert's rule."""
    present = {f.name for f in findings}
    labels = {name: float(name in present) for name in CXR_LABELS if name != NO_FINDING}
    labels[NO_FINDING] = float(not (present - _NOT_PATHOLOGY))
    return {name: labels[name] for name in CXR_LABELS}
