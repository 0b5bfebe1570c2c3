"""The CheXpert-style labeler on hand-written, real-world report phrasings and on odd text."""

from __future__ import annotations

import time

import numpy as np
import pytest

from factory.data.labels import CXR_LABELS, Finding
from factory.data.text.labeler import finding_labels, label_report, label_vector

CM, EFF, PTX = "Cardiomegaly", "Pleural Effusion", "Pneumothorax"
CONS, EDEMA, NOD, ATEL, DEV, NF = ("Consolidation/Pneumonia", "Edema", "Nodule/Mass", "Atelectasis",
                                   "Support Devices", "No Finding")

# (text, exact expected labels): every label not listed must be absent (not mentioned).
CASES = [
    ("no pleural effusion", {EFF: 0, NF: 1}),
    ("cannot exclude pneumonia", {CONS: -1}),
    ("the heart is mildly enlarged", {CM: 1}),
    ("right-sided PICC line", {DEV: 1, NF: 1}),
    ("No acute cardiopulmonary process.", {NF: 1}),
    ("Possible small left effusion.", {EFF: -1}),
    ("Endotracheal tube terminates 4 cm above the carina.", {DEV: 1, NF: 1}),
    ("Lungs are clear.", {NF: 1}),
    ("No focal consolidation, pleural effusion, or pneumothorax.", {CONS: 0, EFF: 0, PTX: 0, NF: 1}),
    ("Mild pulmonary vascular congestion.", {EDEMA: 1}),
    ("Bibasilar atelectasis.", {ATEL: 1}),
    ("Heart size is normal.", {CM: 0, NF: 1}),
    ("There is a 1.5 cm nodule in the right upper lobe.", {NOD: 1}),
    ("Resolved pneumothorax.", {PTX: 0, NF: 1}),
    ("No effusion; there is mild edema.", {EFF: 0, EDEMA: 1}),
    ("No pleural effusion, but there is mild pulmonary edema.", {EFF: 0, EDEMA: 1}),
    ("There is no pneumothorax and the heart is enlarged.", {PTX: 0, CM: 1}),
    ("Pneumothorax has resolved.", {PTX: 0, NF: 1}),
    ("Effusions, pneumothorax and consolidation are not seen.", {EFF: 0, PTX: 0, CONS: 0, NF: 1}),
    ("The heart is not enlarged.", {CM: 0, NF: 1}),
    ("The cardiomediastinal silhouette is within normal limits.", {CM: 0, NF: 1}),
    ("Cardiomediastinal and hilar contours are normal.", {CM: 0, NF: 1}),
    ("Heart size is at the upper limits of normal.", {CM: 0, NF: 1}),
    ("Heart size is borderline enlarged.", {CM: -1}),
    ("Moderate cardiomegaly.", {CM: 1}),
    ("Left basilar opacity, likely atelectasis, though pneumonia cannot be excluded.", {ATEL: -1, CONS: -1}),
    ("Atelectasis or pneumonia in the left lower lobe.", {ATEL: -1, CONS: -1}),
    ("Right lower lobe opacity concerning for pneumonia.", {CONS: -1}),
    # One merged label: the definite consolidation outweighs the hedged pneumonia.
    ("Right lower lobe consolidation concerning for pneumonia.", {CONS: 1}),
    ("Right lower lobe consolidation, consistent with pneumonia.", {CONS: 1}),
    ("Findings may represent early pneumonia.", {CONS: -1}),
    ("Pneumonia is not excluded.", {CONS: -1}),
    ("Evaluate for pneumonia.", {CONS: -1}),
    ("Right lower lobe pneumonia?", {CONS: -1}),
    ("No evidence of pneumonia.", {CONS: 0, NF: 1}),
    ("No definite focal consolidation.", {CONS: 0, NF: 1}),
    ("No change in the large right pleural effusion.", {EFF: 1}),
    ("No significant interval change in moderate pulmonary edema.", {EDEMA: 1}),
    ("Small left pleural effusion; no right effusion is seen.", {EFF: 1}),
    ("No pericardial effusion.", {NF: 1}),
    ("Mass effect on the trachea from a goiter.", {NF: 1}),
    ("The ET tube has been removed.", {DEV: 0, NF: 1}),
    ("Interval removal of the endotracheal tube.", {DEV: 0, NF: 1}),
    ("Left-sided pacemaker with leads in the right atrium and right ventricle.", {DEV: 1, NF: 1}),
    ("Nasogastric tube tip is in the stomach.", {DEV: 1, NF: 1}),
    ("Right internal jugular central venous catheter terminates in the mid SVC.", {DEV: 1, NF: 1}),
    ("Moderate cardiomegaly with mild pulmonary edema and small bilateral effusions.", {CM: 1, EDEMA: 1, EFF: 1}),
    ("Blunting of the left costophrenic angle.", {EFF: 1}),
    ("The costophrenic angles are sharp.", {EFF: 0, NF: 1}),
    ("Small right apical pneumothorax.", {PTX: 1}),
    ("Large left hydropneumothorax.", {PTX: 1, EFF: 1}),
    ("Increased interstitial markings suggesting interstitial edema.", {EDEMA: -1}),
    ("Findings are consistent with congestive heart failure.", {EDEMA: 1}),
    ("There is no pulmonary vascular congestion or edema.", {EDEMA: 0, NF: 1}),
    ("Plate-like atelectasis at the left lung base.", {ATEL: 1}),
    ("Spiculated 3.5 cm mass in the left upper lobe, concerning for malignancy.", {NOD: 1}),
    ("No suspicious pulmonary nodules or masses.", {NOD: 0, NF: 1}),
    ("Retrocardiac opacity may reflect atelectasis versus consolidation.", {ATEL: -1, CONS: -1}),
    ("Patchy airspace opacities in the right lower lobe.", {CONS: 1}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.", {CONS: 0, EFF: 0, PTX: 0, NF: 1}),
    ("No pneumothorax following line placement.", {PTX: 0, NF: 1}),
    ("Stable small left pleural effusion with adjacent atelectasis.", {EFF: 1, ATEL: 1}),
    ("The heart size is normal, and the mediastinal contours are unremarkable.", {CM: 0, NF: 1}),
    ("No pleural effusion is seen, and mild edema is present.", {EFF: 0, EDEMA: 1}),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:48] for c in CASES])
def test_hand_written_sentences(text, expected):
    assert label_report(text) == {k: float(v) for k, v in expected.items()}


def test_sections_and_aggregation_across_sentences():
    report = ("FINDINGS: There is a small left pleural effusion. No right effusion. Possible right lower lobe "
              "pneumonia. No pneumothorax.\n\nIMPRESSION: 1. Small left pleural effusion. 2. Possible pneumonia.")
    # Any positive mention wins over negative ones; uncertain stays uncertain without a positive.
    assert label_report(report) == {EFF: 1.0, PTX: 0.0, CONS: -1.0}


def test_support_devices_do_not_block_no_finding():
    assert label_report("Right PICC line tip in the SVC. Lungs are clear.") == {DEV: 1.0, NF: 1.0}
    assert label_report("Chest tube in place. Small residual pneumothorax.") == {PTX: 1.0, DEV: 1.0}


def test_label_vector():
    vec = label_vector("Moderate cardiomegaly. No pleural effusion. Possible pneumonia.")
    assert vec.dtype == np.float32 and vec.shape == (len(CXR_LABELS),)
    expected = {CM: 1.0, EFF: 0.0, CONS: -1.0}
    for i, name in enumerate(CXR_LABELS):
        if name in expected:
            assert vec[i] == expected[name]
        else:
            assert np.isnan(vec[i]), name


@pytest.mark.parametrize("text", [
    "", "   ", ".", "<unk> <unk> <pad>", "FINDINGS:", "IMPRESSION: .", "no no no no", "?????",
    "effusion effusion no effusion possible", "the the the heart heart is is enlarged enlarged",
    "ФИНДИНГС: нет выпота 胸水なし", "1. 2. 3.", "edema" * 50, "no " * 2000 + "pneumothorax",
])
def test_odd_text_never_raises(text):
    labels = label_report(text)
    assert set(labels) <= set(CXR_LABELS)
    assert all(v in (-1.0, 0.0, 1.0) for v in labels.values())


def test_empty_report_is_no_finding():
    assert label_report("") == {NF: 1.0}


def test_long_garbage_is_fast():
    rng = np.random.default_rng(0)
    words = np.array("no heart is not enlarged effusion possible pneumonia , ; . tube the left".split())
    text = " ".join(rng.choice(words, 20_000))
    start = time.perf_counter()
    label_report(text)
    assert time.perf_counter() - start < 5.0


def test_finding_labels_follow_chexpert_no_finding_rule():
    assert finding_labels([])[NF] == 1.0
    assert finding_labels([Finding(DEV, 0.5, "right", "PICC")]) == {**{k: 0.0 for k in CXR_LABELS}, NF: 1.0, DEV: 1.0}
    labels = finding_labels([Finding(EFF, 0.5, "left"), Finding(DEV, 0.5, None, "ET tube")])
    assert labels[NF] == 0.0 and labels[EFF] == 1.0 and labels[DEV] == 1.0 and labels[PTX] == 0.0


def test_labeler_recovers_the_phantom_studies_own_labels():
    """Issue 3.4 on the phantom itself: the labeler reads each phantom report back to the label
    vector the image was drawn with (CheXpert's No Finding rule on both sides)."""
    from factory.data.phantoms.cxr import generate_study

    truth, read = [], []
    for index in range(600):
        study = generate_study(11, index, size=32)
        truth.append(study.labels)
        read.append(np.nan_to_num(label_vector(study.report), nan=0.0) == 1)
    truth, read = np.array(truth) == 1, np.array(read)
    for k, name in enumerate(CXR_LABELS):
        tp = np.sum(truth[:, k] & read[:, k])
        f1 = 2 * tp / (truth[:, k].sum() + read[:, k].sum())
        assert f1 >= 0.98, f"{name}: F1 {f1:.3f}"
