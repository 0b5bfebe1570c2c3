"""MIMIC-CXR-style reports for phantom studies, written from a small grammar.

`write_report(findings, rng)` describes every present finding with its severity, laterality and
kind, explicitly negates most absent ones, adds finding-free statements (bones, technique) and ends
with an IMPRESSION line. Present findings are always stated definitely (never hedged), so the
labeler's reading of a report equals the study's labels. Severity maps to four bands; each band has
its own words (trace/small/moderate/large, minimal/mild/moderate/severe, ...), and nodule and mass
sizes in cm/mm grow with severity.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from factory.data.labels import CXR_LABELS, Finding

CARDIOMEGALY, EFFUSION, PNEUMOTHORAX = "Cardiomegaly", "Pleural Effusion", "Pneumothorax"
CONSOLIDATION, EDEMA, NODULE = "Consolidation/Pneumonia", "Edema", "Nodule/Mass"
ATELECTASIS, DEVICES = "Atelectasis", "Support Devices"

# Words for severity bands [0, .25), [.25, .5), [.5, .75), [.75, 1].
SIZE_WORDS = (("trace", "tiny", "minimal", "very small"), ("small",), ("moderate", "moderate-sized"),
              ("large",))
DEGREE_WORDS = (("minimal", "slight"), ("mild",), ("moderate",), ("severe", "marked"))
DEGREE_ADVERBS = (("minimally", "slightly"), ("mildly",), ("moderately",), ("severely", "markedly"))
OPACITY_WORDS = (("subtle", "faint", "minimal"), ("mild", "small"), ("moderate", "moderately dense"),
                 ("dense", "extensive", "confluent"))
ATELECTASIS_WORDS = (("minimal", "subtle"), ("mild",), ("moderate",), ("severe", "extensive"))

LOBES = {"right": ("right upper lobe", "right middle lobe", "right lower lobe"),
         "left": ("left upper lobe", "left lower lobe", "lingula")}
ZONES = ("lung base", "lower lung", "mid lung", "upper lung", "perihilar region", "lower lung zone")
OTHER_SIDE = {"left": "right", "right": "left"}
CAVAL_TIPS = ("mid SVC", "lower SVC", "distal SVC", "proximal SVC", "cavoatrial junction")


def _band(severity: float) -> int:
    return min(3, max(0, int(float(severity) * 4)))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str], rng: np.random.Generator, conj: str = "and") -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} {conj} {items[1]}"
    comma = "," if rng.random() < 0.6 else ""
    return ", ".join(items[:-1]) + f"{comma} {conj} {items[-1]}"


def _side(f: Finding) -> str | None:
    return f.laterality if f.laterality in ("left", "right", "bilateral") else None


def _lobe(rng: np.random.Generator, side: str | None) -> str:
    # An unsided finding still sits in one lung; pick it.
    return _pick(rng, LOBES[side if side in LOBES else _pick(rng, ("left", "right"))])


def _where(rng: np.random.Generator, side: str | None) -> str:
    """A lung zone on the finding's side, e.g. 'the left lung base', 'both lung bases'."""
    if side == "bilateral":
        return _pick(rng, ("both lung bases", "both lower lungs", "the bilateral lower lungs",
                           "both perihilar regions"))
    zone = _pick(rng, ZONES)
    return f"the {side} {zone}" if side else f"the {zone}"


# Each describer returns (findings sentences, impression noun phrase) for one present finding.


def _detail(rng: np.random.Generator, sentence: str, details: Sequence[str], p: float = 0.35) -> str:
    """Sometimes extend a sentence (given without its period) with one descriptive detail."""
    if details and rng.random() < p:
        sentence += " " + _pick(rng, details)
    return _cap(sentence) + "."


def _cardiomegaly(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    b = _band(f.severity)
    deg, adv = _pick(rng, DEGREE_WORDS[b]), _pick(rng, DEGREE_ADVERBS[b])
    sentence = _pick(rng, (
        f"the heart is {adv} enlarged", f"{deg} cardiomegaly", f"there is {deg} cardiomegaly",
        f"{deg} enlargement of the cardiac silhouette", f"the cardiac silhouette is {adv} enlarged",
        f"heart size is {adv} enlarged", f"{deg} cardiomegaly is present", f"{deg} cardiomegaly is again noted",
        f"the heart size is {adv} enlarged, and the mediastinal contours are unremarkable",
        f"the cardiomediastinal silhouette is {adv} enlarged",
    ))
    details = ("with a globular configuration", "with left ventricular configuration",
               "with a tortuous thoracic aorta") if b >= 1 else ()
    return [_detail(rng, sentence, details)], f"{deg} cardiomegaly"


def _effusion(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    b = _band(f.severity)
    size, side = _pick(rng, SIZE_WORDS[b]), _side(f)
    if side == "bilateral":
        sentence = _pick(rng, (
            f"{size} bilateral pleural effusions", f"bilateral {size} pleural effusions",
            f"there are {size} bilateral pleural effusions", f"{size} pleural effusions are present bilaterally",
            f"{size} bilateral effusions with blunting of both costophrenic angles",
            f"layering {size} bilateral pleural effusions",
        ))
        details = ("layering dependently", "with meniscus configuration") if b >= 1 else ()
        return [_detail(rng, sentence, details)], f"{size} bilateral pleural effusions"
    where = f"{side} " if side else ""
    options = [
        f"there is {_a(size)} {where}pleural effusion", f"{size} {where}pleural effusion",
        f"{_a(size)} {where}pleural effusion is present", f"{_a(size)} {where}pleural effusion is seen",
        f"{size} amount of {where}pleural fluid",
    ]
    if side:
        options += [
            f"{size} {side}-sided pleural effusion",
            f"{size} {side} pleural effusion blunting the {side} costophrenic angle",
            f"blunting of the {side} costophrenic angle consistent with {_a(size)} pleural effusion",
            f"there is {_a(size)} {side} pleural effusion; no {OTHER_SIDE[side]} effusion is seen",
        ]
    details = []
    if b >= 1:
        details += ["with a meniscus", "layering dependently", "tracking along the lateral chest wall"]
    if b >= 2 and side:
        details += [f"obscuring the {side} hemidiaphragm"]
    if b == 0:
        details += ["along the costophrenic sulcus"]
    return [_detail(rng, _pick(rng, options), details)], f"{size} {where}pleural effusion"


def _pneumothorax(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    b = _band(f.severity)
    size, side = _pick(rng, SIZE_WORDS[b]), _side(f)
    if side == "bilateral":
        sentence = _pick(rng, (f"{size} bilateral pneumothoraces", f"there are {size} bilateral pneumothoraces",
                               f"bilateral {size} apical pneumothoraces"))
        return [_cap(sentence) + "."], f"{size} bilateral pneumothoraces"
    where = f"{side} " if side else ""
    options = [f"there is {_a(size)} {where}pneumothorax", f"{size} {where}pneumothorax",
               f"{_a(size)} {where}pneumothorax is seen", f"{_a(size)} {where}pneumothorax is present"]
    details = ["without mediastinal shift"] if b <= 2 else []
    if side:
        options += [f"{size} {side}-sided pneumothorax", f"{size} {side} pneumothorax with a visible pleural line"]
        if b <= 1:
            options += [f"{size} {side} apical pneumothorax", f"{size} {side} apicolateral pneumothorax",
                        f"a {side} apical pleural line is seen, consistent with {_a(size)} pneumothorax"]
        if b >= 2:
            details += [f"with a deep {side} costophrenic sulcus"]
        if b == 3:
            details += [f"with shift of the mediastinum to the {OTHER_SIDE[side]}"]
    return [_detail(rng, _pick(rng, options), details)], f"{size} {where}pneumothorax"


def _consolidation(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    b = _band(f.severity)
    deg, side = _pick(rng, OPACITY_WORDS[b]), _side(f)
    if f.kind == "lobar":
        lobe = "lower lobe" if side == "bilateral" else _lobe(rng, side)
        place = "both lower lobes" if side == "bilateral" else f"the {lobe}"
        if lobe.endswith("lower lobe") and side != "bilateral" and rng.random() < 0.3:
            place = f"the {_pick(rng, ('superior segment', 'posterior basal segment', 'lateral basal segment'))} " \
                    f"of {place}"
        sentence = _pick(rng, (
            f"{deg} consolidation of {place}", f"{deg} consolidation of {place}, consistent with pneumonia",
            f"there is {deg} consolidation in {place}, consistent with pneumonia",
            f"{deg} airspace consolidation in {place}, compatible with pneumonia",
            f"{deg} opacification of {place} consistent with lobar pneumonia",
            f"{deg} lobar consolidation involving {place}",
        ))
        details = ["with air bronchograms"]
        if lobe in ("right middle lobe", "lingula"):
            details += [f"silhouetting the {'right' if lobe.startswith('right') else 'left'} heart border"]
        if lobe.endswith("lower lobe") and side in ("left", "right"):
            details += [f"obscuring the {side} hemidiaphragm"]
        phrase = _pick(rng, (f"{deg} {'bilateral ' if side == 'bilateral' else ''}{lobe} pneumonia",
                             f"{deg} consolidation of {place}"))
        return [_detail(rng, sentence, details)], phrase
    where = _where(rng, side)
    sentence = _pick(rng, (
        f"{deg} patchy opacity in {where}, consistent with pneumonia", f"{deg} patchy airspace opacities in {where}",
        f"{deg} patchy consolidation at {where}",
        f"there is {deg} patchy airspace disease in {where}, consistent with pneumonia",
        f"{deg} ill-defined patchy opacity at {where} reflecting pneumonia",
        f"{deg} patchy consolidation is seen in {where}", f"{deg} multifocal patchy consolidation in {where}",
        f"{deg} patchy airspace opacity in {where}, compatible with bronchopneumonia",
    ))
    return [_detail(rng, sentence, ("with air bronchograms",), 0.15)], f"{deg} patchy consolidation in {where}"


def _edema(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    b = _band(f.severity)
    deg = _pick(rng, DEGREE_WORDS[b] + (("subtle",) if b == 0 else ()))
    options = [f"{deg} pulmonary edema", f"there is {deg} pulmonary edema", f"{deg} interstitial pulmonary edema",
               f"{deg} pulmonary vascular congestion"]
    if b <= 1:
        options += [f"{deg} pulmonary vascular engorgement", f"{deg} interstitial edema",
                    f"{deg} pulmonary vascular congestion with cephalization"]
        details = ("with indistinct pulmonary vessels", "with mild peribronchial cuffing",
                   "with upper zone vascular redistribution")
    else:
        options += [f"{deg} pulmonary edema with perihilar haziness", f"{deg} interstitial edema with Kerley B lines",
                    f"{deg} alveolar pulmonary edema with bilateral perihilar opacities",
                    f"findings are consistent with {deg} pulmonary edema", f"{deg} diffuse interstitial edema"]
        details = ("and septal thickening", "with peribronchial cuffing", "with fissural thickening")
    phrase = _pick(rng, (f"{deg} pulmonary edema", f"{deg} pulmonary vascular congestion"))
    return [_detail(rng, _pick(rng, options), details, 0.25)], phrase


def _size_text(cm: float, rng: np.random.Generator) -> str:
    if cm < 1.0 and rng.random() < 0.6:
        return f"{round(cm * 10)} mm"
    return f"{cm:.1f} cm"


_FOLLOW_UP = ("Recommend CT of the chest for further characterization.",
              "Further evaluation with chest CT is recommended.",
              "Non-urgent chest CT is recommended for further assessment.",
              "Comparison with outside prior imaging would be helpful.")


def _nodule(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    side = _side(f)
    is_mass = f.kind == "mass"
    # Nodules are under 3 cm by definition; masses are larger.
    cm = (3.2 + 4.8 * f.severity) if is_mass else (0.4 + 2.4 * f.severity)
    size = _size_text(cm, rng)
    noun, nouns = ("mass", "masses") if is_mass else ("nodule", "nodules")
    desc = _pick(rng, ("lobulated", "spiculated", "irregular", "ill-defined", "rounded", "lobular") if is_mass else
                 ("well-circumscribed", "rounded", "noncalcified", "solitary", "ill-defined", "smoothly marginated",
                  "faint", "well-defined"))
    if side == "bilateral":
        lobe = _lobe(rng, _pick(rng, ("left", "right")))
        sentence = _pick(rng, (
            f"Multiple bilateral pulmonary {nouns}, the largest measuring {size} in the {lobe}.",
            f"There are multiple {desc} {nouns} in both lungs, the largest {size} in the {lobe}.",
            f"Numerous {desc} {nouns} are scattered throughout both lungs, up to {size} in the {lobe}.",
        ))
        sentences, phrase = [sentence], f"multiple bilateral pulmonary {nouns}"
    else:
        lobe = _lobe(rng, side)
        sentence = _pick(rng, (
            f"there is {_a(size)} {noun} in the {lobe}", f"{_a(size)} {desc} {noun} projects over the {lobe}",
            f"{size} {desc} {lobe} {noun}", f"{_a(desc)} {noun} measuring {size} is seen in the {lobe}",
            f"{_a(desc)} {'density' if is_mass else 'nodular opacity'} in the {lobe} measures {size}, "
            f"consistent with a {noun}",
            f"there is {_a(size)} {desc} {noun} in the {lobe}", f"{_a(size)} {noun} is present in the {lobe}",
        ))
        sentences = [_cap(sentence) + "."]
        phrase = _pick(rng, (f"{size} {lobe} {noun}", f"{lobe} {noun}"))
    if rng.random() < 0.4:
        sentences.append(_pick(rng, _FOLLOW_UP))
    return sentences, phrase


def _atelectasis(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    """Kind "plate-like" reads as linear/discoid bands at a base, "lobar" as a collapsing lower lobe."""
    b = _band(f.severity)
    deg, side = _pick(rng, ATELECTASIS_WORDS[b]), _side(f)
    kind = (f.kind or "").lower()
    if side == "bilateral":
        options = [f"{deg} bibasilar atelectasis", f"{deg} bilateral basilar atelectasis",
                   f"{deg} atelectasis at both lung bases", f"there is {deg} bibasilar atelectasis",
                   f"{deg} streaky bibasilar atelectasis"]
        if kind != "lobar":
            options += [f"{deg} bibasilar plate-like atelectasis", f"{deg} linear atelectasis at both lung bases"]
        return [_detail(rng, _pick(rng, options), ("with low lung volumes",), 0.15)], f"{deg} bibasilar atelectasis"
    where = f"{side} " if side else ""
    lobe = f"{side} lower lobe" if side else "lower lobe"
    plate = [f"{deg} plate-like atelectasis at the {where}lung base",
             f"{deg} linear atelectasis in the {where}lower lung",
             f"{deg} subsegmental atelectasis at the {where}base", f"{deg} discoid atelectasis at the {where}lung base",
             f"{deg} bandlike atelectasis at the {where}base", f"{deg} {where}basilar atelectasis",
             f"there is {deg} {where}basilar atelectasis", f"{deg} atelectasis at the {where}lung base"]
    lobar = [f"{deg} atelectasis of the {lobe}", f"{deg} atelectasis of the {lobe} with volume loss",
             f"{deg} {lobe} atelectasis with associated volume loss", f"there is {deg} {lobe} atelectasis"]
    if side == "left":
        lobar += [f"{deg} retrocardiac atelectasis"]
    if b == 3:
        lobar += [f"near-complete collapse of the {lobe}"]
    options = plate if kind == "plate-like" else lobar if kind == "lobar" else plate + lobar
    details = ["with crowding of the adjacent bronchovascular markings"] if b >= 2 else []
    if b >= 2 and side:
        details += [f"and elevation of the {side} hemidiaphragm"]
    phrase = f"{deg} atelectasis in the {side} lung" if side else f"{deg} atelectasis"
    return [_detail(rng, _pick(rng, options), details, 0.25)], phrase


def _device(f: Finding, rng: np.random.Generator) -> tuple[list[str], str]:
    side = f.laterality if f.laterality in ("left", "right") else None
    sided = f"{side}-sided " if side else ""
    s = f"{side} " if side else ""
    tip = _pick(rng, CAVAL_TIPS)
    kind = (f.kind or "").lower()
    if kind == "picc":
        options = (f"{sided}PICC line terminates in the {tip}", f"{s}PICC line tip is in the {tip}",
                   f"{_a(s + 'upper extremity')} PICC ends in the {tip}", f"{s}arm PICC with tip at the {tip}",
                   f"{sided}PICC is unchanged in position, terminating in the {tip}")
        return [_cap(_pick(rng, options)) + "."], f"{sided}PICC line"
    if kind in ("et tube", "ett", "endotracheal tube"):
        cm = 2.0 + 0.5 * int(rng.integers(11))
        options = (f"The endotracheal tube terminates {cm:.1f} cm above the carina.",
                   f"Endotracheal tube tip is {cm:.1f} cm above the carina.",
                   f"ET tube in standard position, {cm:.1f} cm above the carina.",
                   f"An endotracheal tube is in place with its tip {cm:.1f} cm from the carina.",
                   "The endotracheal tube terminates at the level of the clavicular heads.")
        return [_pick(rng, options)], "endotracheal tube"
    if kind in ("ng tube", "og tube", "enteric tube", "nasogastric tube"):
        options = ("An enteric tube courses below the diaphragm with its tip in the stomach.",
                   "Nasogastric tube tip is in the stomach.",
                   "The NG tube extends below the left hemidiaphragm, with the side port in the stomach.",
                   "A nasogastric tube is seen with its tip in the gastric body.",
                   "An orogastric tube passes below the diaphragm and out of view.",
                   "The enteric tube side port lies beyond the gastroesophageal junction.")
        return [_pick(rng, options)], _pick(rng, ("nasogastric tube", "enteric tube"))
    if kind in ("pacemaker", "icd", "pacer"):
        options = (f"{sided}pacemaker with leads terminating in the right atrium and right ventricle",
                   f"{_a(s + 'chest wall')} pacemaker is in place with leads in the expected positions",
                   f"dual-lead {sided}pacemaker device", f"{sided}dual-chamber pacemaker is unchanged",
                   f"{_a(sided + 'cardiac')} pacemaker is present, with a single lead in the right ventricle",
                   f"{sided}biventricular pacer with leads in the right atrium, right ventricle and coronary sinus")
        return [_cap(_pick(rng, options)) + "."], f"{sided}pacemaker"
    if kind == "chest tube":
        options = (f"{s}chest tube in place", f"{_a(sided + 'chest')} tube is in place",
                   f"{_a(sided + 'pigtail')} catheter projects over the {s}lung base",
                   f"{s}basilar chest tube is present", f"{s}apical chest tube is unchanged in position",
                   f"{_a(s + 'chest')} tube is seen with its tip near the {s}lung apex")
        return [_cap(_pick(rng, options)) + "."], f"{s}chest tube"
    if kind in ("central line", "cvc", "central venous catheter"):
        vein = _pick(rng, ("internal jugular", "subclavian"))
        options = (f"{s}{vein} central venous catheter terminates in the {tip}",
                   f"{s}{vein} central line tip is in the {tip}", f"{_a(s + vein)} line ends at the {tip}",
                   f"{s}{vein} catheter tip projects over the {tip}")
        return [_cap(_pick(rng, options)) + "."], f"{s}{vein} central line"
    return [_pick(rng, ("Support devices are in standard position.", "Lines and tubes are in appropriate position.",
                        "Monitoring devices project over the chest."))], "support devices"


DESCRIBERS: dict[str, Callable[[Finding, np.random.Generator], tuple[list[str], str]]] = {
    CARDIOMEGALY: _cardiomegaly, EFFUSION: _effusion, PNEUMOTHORAX: _pneumothorax,
    CONSOLIDATION: _consolidation, EDEMA: _edema, NODULE: _nodule, ATELECTASIS: _atelectasis, DEVICES: _device,
}
# Reading order of a typical report: tubes and lines, lungs, pleura, heart.
ORDER = (DEVICES, CONSOLIDATION, EDEMA, NODULE, ATELECTASIS, EFFUSION, PNEUMOTHORAX, CARDIOMEGALY)

_NEGATED_TERMS = {
    CONSOLIDATION: ("focal consolidation", "consolidation", "focal airspace consolidation", "pneumonia",
                    "focal airspace disease"),
    EFFUSION: ("pleural effusion", "effusion", "pleural fluid"),
    PNEUMOTHORAX: ("pneumothorax",),
}
_NEGATION_FRAMES = ("No {}.", "There is no {}.", "No evidence of {}.", "No {} is seen.", "No {} is identified.",
                    "There is no evidence of {}.", "No {} is present.", "No definite {}.",
                    "No radiographic evidence of {}.")
_NORMAL_HEART = (
    "The cardiomediastinal silhouette is within normal limits.", "Heart size is normal.",
    "The heart is normal in size.", "Normal heart size.", "The cardiac silhouette is not enlarged.",
    "Heart size is within normal limits.", "Cardiomediastinal and hilar contours are normal.",
    "The cardiac and mediastinal contours are unremarkable.", "Normal cardiomediastinal silhouette.",
    "No cardiomegaly.", "The heart size is normal, and the mediastinal contours are unremarkable.",
    "The cardiomediastinal silhouette is unremarkable.", "Heart size and mediastinal contours are normal.",
    "The heart is not enlarged.", "Normal size of the cardiac silhouette.",
    "Heart size is at the upper limits of normal.",
)
_NO_EDEMA = ("No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema.",
             "No pulmonary vascular congestion.", "There is no pulmonary vascular congestion or edema.",
             "No evidence of congestive heart failure.", "There is no interstitial edema.")
_NO_NODULE = ("No suspicious pulmonary nodules or masses.", "No focal nodules.",
              "No pulmonary nodules are identified.", "No discrete nodule or mass.",
              "No suspicious pulmonary mass is seen.")
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "The lungs are clear bilaterally.",
                "Both lungs are clear.", "The lungs are otherwise clear.", "The lungs are grossly clear.")
_FILLERS = ("No acute osseous abnormality.", "The visualized osseous structures are unremarkable.",
            "Osseous structures are intact.", "No acute bony abnormality.",
            "There is no free air under the diaphragm.", "The upper abdomen is unremarkable.",
            "Hilar contours are normal.", "The mediastinal and hilar contours are unremarkable.",
            "Degenerative changes of the thoracic spine.", "The trachea is midline.",
            "No displaced rib fractures are identified.", "The soft tissues are unremarkable.",
            "The bony thorax is intact.", "No subdiaphragmatic free air.",
            "The visualized upper abdomen is within normal limits.", "Mild degenerative changes of the thoracic spine.",
            "The pulmonary vasculature is within normal limits.", "Both hemidiaphragms are well defined.",
            "The hila are unremarkable.", "Mild multilevel degenerative changes are noted in the spine.",
            "There is no mediastinal widening.", "No hilar or mediastinal lymphadenopathy is evident.",
            "The thoracic aorta is unremarkable in caliber.", "No acute rib fracture is seen.",
            "Visualized portions of the shoulders are unremarkable.", "No subcutaneous emphysema.")
_TECHNIQUE = ("Single frontal view of the chest.", "Frontal radiograph of the chest.",
              "A frontal view of the chest was obtained.", "Portable frontal chest radiograph.",
              "Upright frontal view of the chest.", "No prior studies are available for comparison.",
              "Frontal chest radiograph without prior for comparison.")
_NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "No acute intrathoracic process.", "Normal chest radiograph.",
                      "No radiographic evidence of acute cardiopulmonary disease.",
                      "No acute cardiopulmonary findings.",
                      "No evidence of acute cardiopulmonary disease.", "Unremarkable chest radiograph.")
_DEVICE_IMPRESSION = ("Support devices in standard position.", "Lines and tubes in appropriate position.",
                      "Support devices as described above.", "Tubes and lines as described.")
_NOTIFICATION = ("Findings were discussed with the referring clinician by telephone.",
                 "These findings were communicated to the ordering physician at the time of interpretation.",
                 "Clinical correlation is recommended.")


def _negations(absent: set[str], lungs_clear: bool, rng: np.random.Generator) -> list[str]:
    """Explicit negations of absent findings, as radiologists group them."""
    out: list[str] = []
    if lungs_clear and rng.random() < 0.5:
        out.append(_pick(rng, _CLEAR_LUNGS))
    grouped = [name for name in (CONSOLIDATION, EFFUSION, PNEUMOTHORAX) if name in absent]
    if grouped and rng.random() < 0.95:
        order = list(rng.permutation(len(grouped))) if rng.random() < 0.3 else list(range(len(grouped)))
        terms = [_pick(rng, _NEGATED_TERMS[grouped[i]]) for i in order]
        if len(terms) == 3 and rng.random() < 0.3:
            # Sometimes the pleura and the parenchyma get their own sentences.
            out.append(_pick(rng, _NEGATION_FRAMES).format(terms[0]))
            terms = terms[1:]
        out.append(_pick(rng, _NEGATION_FRAMES).format(_join(terms, rng, "or")))
    if EDEMA in absent and rng.random() < 0.6:
        out.append(_pick(rng, _NO_EDEMA))
    if NODULE in absent and rng.random() < 0.25:
        out.append(_pick(rng, _NO_NODULE))
    if ATELECTASIS in absent and rng.random() < 0.08:
        out.append(_pick(rng, ("No atelectasis.", "There is no atelectasis.")))
    if EFFUSION in absent and rng.random() < 0.1:
        out.append(_pick(rng, ("The costophrenic angles are sharp.", "Sharp costophrenic angles.")))
    return out


def write_report(findings: Sequence[Finding], rng: np.random.Generator) -> str:
    """A "FINDINGS: ... IMPRESSION: ..." report for a study with these findings (empty = normal)."""
    known = set(CXR_LABELS)
    for f in findings:
        if f.name not in known:
            raise ValueError(f"unknown finding {f.name!r}; expected one of {CXR_LABELS}")
    present = [f for f in findings if f.name != "No Finding"]
    present.sort(key=lambda f: ORDER.index(f.name))
    names = {f.name for f in present}
    absent = set(ORDER) - names

    described = [(f.name, *DESCRIBERS[f.name](f, rng)) for f in present]
    devices = [s for name, sents, _ in described if name == DEVICES for s in sents]
    lung = [s for name, sents, _ in described if name in (CONSOLIDATION, EDEMA, NODULE, ATELECTASIS) for s in sents]
    pleura = [s for name, sents, _ in described if name in (EFFUSION, PNEUMOTHORAX) for s in sents]
    heart = [s for name, sents, _ in described if name == CARDIOMEGALY for s in sents]
    lungs_clear = not (names & {CONSOLIDATION, EDEMA, NODULE, ATELECTASIS})
    negations = _negations(absent, lungs_clear, rng)
    heart_normal = [_pick(rng, _NORMAL_HEART)] if CARDIOMEGALY in absent and rng.random() < 0.85 else []
    fillers = [_pick(rng, _FILLERS) for _ in range(int(rng.integers(3)))]
    fillers = list(dict.fromkeys(fillers))

    body = devices + lung + pleura + negations
    cardiac = heart + heart_normal
    # Some radiologists open with the heart, most end with it.
    body = cardiac + body if rng.random() < 0.3 else body + cardiac
    if rng.random() < 0.25:
        body = [_pick(rng, _TECHNIQUE)] + body
    body += fillers

    pathology = [phrase for name, _, phrase in described if name != DEVICES]
    if not pathology:
        impression = _pick(rng, _NORMAL_IMPRESSION)
    elif len(pathology) > 1 and rng.random() < 0.3:
        impression = " ".join(f"{i}. {_cap(p)}." for i, p in enumerate(pathology, 1))
    else:
        impression = _cap(_join(pathology, rng)) + "."
    if devices and rng.random() < 0.5:
        impression += " " + _pick(rng, _DEVICE_IMPRESSION)
    if pathology and rng.random() < 0.1:
        impression += " " + _pick(rng, _NOTIFICATION)
    return "FINDINGS: " + " ".join(body) + "\n\nIMPRESSION: " + impression
