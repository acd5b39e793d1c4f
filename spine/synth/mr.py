"""MR physics of the synthetic studies (generator version 3): tissue relaxation, sequences, signal equations.

Each tissue has a proton density (relative to water) and T1, T2 at 1.5 T and 3 T (`TISSUES`, sources in
docs/synthetic.md); each series is acquired with a `Sequence` (turbo spin echo T1 or T2, STIR, fat-saturated T2)
whose signal equation turns those into a brightness per tissue, scaled by the scanner so that the brightest
tissue of the series reads 1 (`Sequence.tissue_values`). The same sequence writes its DICOM tags (`Sequence.tags`).

Signal equations (magnitude, TE << TR):
- spin echo / turbo spin echo: S = PD (1 - exp(-TR/T1)) exp(-TE/T2); fat's T2 is lengthened on turbo spin echo
  (J-coupling is broken up by the echo train: fat is "anomalously bright", Henkelman 1992);
- STIR (inversion recovery, then a spin-echo train): S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2), with TI
  at fat's null point (TI = T1_fat ln(2 / (1 + exp(-TR/T1_fat)))), so fat and fatty marrow go dark;
- spectral fat saturation: the fat component scaled by a residual (incomplete suppression, 3-12 %).
Vertebral marrow is two components: S = f S_fat + (1 - f) S_red, f the local fat fraction (spine.synth.anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spine.synth.dicom_writer import decimal_string

# tissue -> (proton density, T1 at 1.5 T, T2 at 1.5 T, T1 at 3 T, T2 at 3 T), ms, rounded from the literature;
# docs/synthetic.md gives the source of each row (and which are estimates)
TISSUES: dict[str, tuple[float, float, float, float, float]] = {
    "csf": (1.00, 4000.0, 1800.0, 4200.0, 1700.0),
    "nerve": (0.65, 780.0, 80.0, 880.0, 73.0),  # nerve roots, cauda equina and cord
    "red_marrow": (0.90, 900.0, 50.0, 1100.0, 40.0),  # the water (haematopoietic) component of marrow
    "fat": (0.90, 343.0, 58.0, 382.0, 68.0),  # subcutaneous, epidural, foraminal, and marrow's fat component
    "cortical": (0.20, 250.0, 0.4, 250.0, 0.35),  # cortical bone: T2 < 1 ms, dark on every clinical sequence
    "nucleus": (0.80, 1165.0, 110.0, 1350.0, 120.0),  # healthy nucleus pulposus (see DEGENERATED_NUCLEUS)
    "annulus": (0.65, 900.0, 55.0, 1100.0, 45.0),  # annulus fibrosus
    "muscle": (0.75, 1000.0, 35.0, 1400.0, 32.0),  # psoas, paraspinal and the trunk wall
    "ligament": (0.60, 800.0, 40.0, 1000.0, 35.0),  # ligamentum flavum (elastic): an estimate
    "viscera": (0.80, 950.0, 70.0, 1300.0, 60.0),  # kidney, bowel wall in front of the psoas: an estimate
}
# a fully desiccated nucleus (Pfirrmann IV): (PD, T1 1.5 T, T2 1.5 T, T1 3 T, T2 3 T)
DEGENERATED_NUCLEUS: tuple[float, float, float, float, float] = (0.55, 650.0, 55.0, 800.0, 50.0)
FAT_TSE_T2_GAIN = 2.0  # fat's apparent T2 on a long echo train, relative to its spin-echo T2 (J-coupling)
STIR_FAT_T1 = (240.0, 320.0)  # fat's effective T1 under inversion at 1.5 T, 3 T (what clinical TIs null)
FIELDS_T = (1.5, 3.0)
MANUFACTURERS = ("GE MEDICAL SYSTEMS", "SIEMENS", "Philips Medical Systems")  # vendors 0, 1, 2 (their gains)
KINDS = ("T1", "T2", "STIR", "T2 FS")  # the sequences a series can have


@dataclass(frozen=True)
class Sequence:
    """One series' acquisition: kind (`KINDS`), field (T), TR, TE, TI (ms; TI for STIR only), echo train length,
    flip angle (degrees), the fat saturation residual (1 = none), the manufacturer."""

    kind: str
    field_t: float
    tr: float
    te: float
    ti: float | None = None
    etl: int = 1
    flip: float = 90.0
    fat_residual: float = 1.0
    manufacturer: str = MANUFACTURERS[1]

    def relaxation(self, tissue: str, properties: tuple | None = None) -> tuple[float, float, float]:
        """(PD, T1, T2) of a tissue at this field: fat's T2 lengthened on an echo train, its T1 the effective one
        under inversion (STIR). ``properties``: a row like `TISSUES`' instead of the tissue's own."""
        pd, t1_15, t2_15, t1_3, t2_3 = TISSUES[tissue] if properties is None else properties
        t1, t2 = (t1_15, t2_15) if self.field_t < 2 else (t1_3, t2_3)
        if tissue == "fat":
            if self.etl > 1:
                t2 *= 1.0 + (FAT_TSE_T2_GAIN - 1.0) * min(self.etl, 16) / 16
            if self.ti is not None:
                t1 = STIR_FAT_T1[0 if self.field_t < 2 else 1]
        return pd, t1, t2

    def signal(self, pd: float, t1: float, t2: float | np.ndarray) -> float | np.ndarray:
        """Magnitude signal of the sequence's equation for tissue properties (no scaling)."""
        decay = np.exp(-self.te / np.asarray(t2, dtype=np.float64))
        if self.ti is not None:
            return pd * abs(1 - 2 * np.exp(-self.ti / t1) + np.exp(-self.tr / t1)) * decay
        return pd * (1 - np.exp(-self.tr / t1)) * decay

    def raw_values(self) -> dict[str, float]:
        """Unscaled signal of every tissue (a healthy nucleus); fat scaled by the fat saturation residual."""
        values = {tissue: float(self.signal(*self.relaxation(tissue))) for tissue in TISSUES}
        values["fat"] *= self.fat_residual
        return values

    def nucleus(self, degeneration: float | np.ndarray) -> np.ndarray:
        """Unscaled nucleus signal at a degeneration in [0, 1]: PD, T1 and T2 moved toward the desiccated
        nucleus' (``DEGENERATED_NUCLEUS``)."""
        d = np.asarray(degeneration, dtype=np.float64)
        healthy = np.array(self.relaxation("nucleus"))
        desiccated = np.array(self.relaxation("nucleus", DEGENERATED_NUCLEUS))
        pd, t1, t2 = (healthy[:, None] + (desiccated - healthy)[:, None] * d.reshape(1, -1)).reshape(3, *d.shape)
        return self.signal(pd, t1, t2)

    @property
    def scale(self) -> float:
        """The scanner's scaling: 1 / the brightest tissue (healthy nucleus, fat at its residual, or CSF)."""
        return 1.0 / max(self.raw_values().values())

    def tissue_values(self) -> dict[str, float]:
        """Brightness (about 0..1) of every tissue of `TISSUES` on this series, the scaling applied."""
        scale = self.scale
        return {tissue: value * scale for tissue, value in self.raw_values().items()}

    def tags(self) -> dict[str, object]:
        """The DICOM keywords a scanner writes for this sequence (besides the geometry), in Siemens' convention
        for every vendor: turbo spin echo ``SE`` / ``SK\\SP\\OSP``; STIR ``SE\\IR`` / ``SK\\SP\\MP\\OSP`` with
        ScanOptions ``IR`` (what Siemens writes; not a defined term of the standard); spectral fat saturation
        ScanOptions ``FS``."""
        tags: dict[str, object] = {
            "ScanningSequence": "SE", "SequenceVariant": ["SK", "SP", "OSP"],
            "RepetitionTime": decimal_string(self.tr, 3), "EchoTime": decimal_string(self.te, 3),
            "EchoTrainLength": int(self.etl), "FlipAngle": decimal_string(self.flip, 3),
            "MagneticFieldStrength": decimal_string(self.field_t, 3), "Manufacturer": self.manufacturer,
        }
        if self.ti is not None:
            tags.update(ScanningSequence=["SE", "IR"], SequenceVariant=["SK", "SP", "MP", "OSP"], ScanOptions="IR",
                        InversionTime=decimal_string(self.ti, 3))
        elif self.fat_residual < 1:
            tags["ScanOptions"] = "FS"
        return tags


def stir_null(t1_fat: float, tr: float) -> float:
    """The inversion time (ms) that nulls a tissue of this T1: 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0."""
    return float(t1_fat * np.log(2.0 / (1.0 + np.exp(-tr / t1_fat))))


def typical_sequence(description: str, field_t: float = 1.5) -> Sequence:
    """A typical protocol for a series description (the middle of `sample_sequence`'s ranges): Sagittal T1 -> T1,
    Sagittal T2/STIR and Axial T2 -> T2 (not fat-suppressed)."""
    if description == "Sagittal T1":
        return Sequence("T1", field_t, 575.0, 11.0, etl=3)
    return Sequence("T2", field_t, 3500.0, 100.0, etl=20)


def sample_sequence(kind: str, field_t: float, manufacturer: str, rng: np.random.Generator) -> Sequence:
    """A clinical lumbar-spine protocol of one kind at one field (docs/synthetic.md lists the ranges)."""
    flip = 150.0 if manufacturer == MANUFACTURERS[1] else 90.0  # Siemens writes its refocusing angle
    if kind == "T1":
        return Sequence("T1", field_t, rng.uniform(400, 750), rng.uniform(8, 14), etl=int(rng.integers(2, 6)),
                        flip=flip, manufacturer=manufacturer)
    if kind == "STIR":
        tr = rng.uniform(3000, 5000)
        ti = stir_null(STIR_FAT_T1[0 if field_t < 2 else 1], tr) * rng.uniform(0.95, 1.05)  # near fat's null
        return Sequence("STIR", field_t, tr, rng.uniform(35, 70), ti=ti, etl=int(rng.integers(8, 20)), flip=flip,
                        manufacturer=manufacturer)
    residual = rng.uniform(0.03, 0.12) if kind == "T2 FS" else 1.0
    return Sequence(kind, field_t, rng.uniform(2500, 4500), rng.uniform(85, 120), etl=int(rng.integers(12, 28)),
                    flip=flip, fat_residual=residual, manufacturer=manufacturer)
