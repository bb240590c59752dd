"""Survival datasets for the Cox chapter: SUPPORT, Rotterdam, GBSG2 (offline) and a METABRIC loader.

Every loader returns a :class:`SurvivalDataset`: a pandas frame with numeric covariates (codings below),
``time`` (> 0) and ``event`` (1 = event, 0 = censored). :func:`split` makes the paper's split (20% test,
then 20% of the rest validation, seeded) and standardises the continuous covariates with the training
split's mean and standard deviation; binary and ordinal covariates are left as coded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ._files import check_seed, check_text, locate, sha256

__all__ = ["SurvivalDataset", "SurvivalSplit", "load_support", "load_rotterdam", "load_gbsg2", "load_metabric",
           "split", "DATASETS"]


@dataclass(frozen=True)
class SurvivalDataset:
    """A survival dataset.

    Attributes:
        name: short name (``"support"``, ``"rotterdam"``, ...).
        frame: ``(n, p + 2)`` frame: the covariate columns, then ``time`` and ``event``.
        covariates: covariate column names, in model order.
        continuous: the covariates standardised by :func:`split`.
        source: provenance and licence, one line.
        sha256: digest of the file read (external files only).
    """

    name: str
    frame: pd.DataFrame
    covariates: list[str]
    continuous: list[str]
    source: str
    sha256: str | None = None

    @property
    def n(self) -> int:
        """Number of patients."""
        return len(self.frame)


@dataclass(frozen=True)
class SurvivalSplit:
    """Train / validation / test parts of a dataset, covariates as float64 arrays ``(n_part, p)``.

    ``x_*`` have the continuous covariates standardised with ``mean`` / ``scale`` of the training part
    (raw value = ``x * scale + mean``); ``rows_*`` index the rows of ``dataset.frame``.
    """

    dataset: SurvivalDataset
    rows_train: np.ndarray
    rows_val: np.ndarray
    rows_test: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, time, event)`` of ``"train"``, ``"val"`` or ``"test"``: shapes ``(m, p)``, ``(m,)``, ``(m,)``."""
        return self.parts[name]


def _survset(name: str):
    from SurvSet.data import SurvLoader  # imported here: SurvSet reads its CSVs at import of the loader

    return SurvLoader().load_dataset(name)["df"]


def load_support() -> SurvivalDataset:
    """SUPPORT (Study to Understand Prognoses and Preferences for Outcomes and Risks of Treatments).

    Provenance: SurvSet's ``support2`` (9,105 seriously ill hospitalised adults, 5 US centres 1989-1994;
    Knaus et al. 1995; distributed by Vanderbilt Biostatistics, https://hbiostat.org/data, for public use),
    reduced to the 14 covariates of DeepSurv (Katzman et al. 2018). Rows with a missing covariate are
    dropped, which leaves 8,873 patients -- the size DeepSurv reports. ``time``: days to death or last
    follow-up (ties are frequent); event rate about 68%.

    Columns and codings: ``age`` (years), ``sex`` (1 female), ``race`` (1 not white, including 'missing'),
    ``num_co`` (number of comorbidities), ``diabetes`` (0/1), ``dementia`` (0/1), ``cancer`` (0 no,
    1 yes, 2 metastatic), ``meanbp`` (mean arterial blood pressure), ``hrt`` (heart rate), ``resp``
    (respiration rate), ``temp`` (temperature, Celsius), ``wblc`` (white blood cells, 1000/uL), ``sod``
    (serum sodium), ``crea`` (serum creatinine). Continuous: age, num_co and the seven physiology values.
    As in DeepSurv, physiologically impossible zeros (``meanbp``, ``hrt``, ``resp`` = 0: missing values
    coded as 0 in the source) are kept; they are among the most influential patients.
    """
    raw = _survset("support2")
    frame = pd.DataFrame({
        "age": raw["num_age"], "sex": (raw["fac_sex"] == "female").astype(float),
        "race": (raw["fac_race"] != "white").astype(float), "num_co": raw["num_num_co"],
        "diabetes": raw["fac_diabetes"].astype(float), "dementia": raw["fac_dementia"].astype(float),
        "cancer": raw["fac_ca"].map({"no": 0.0, "yes": 1.0, "metastatic": 2.0}).astype(float),
        "meanbp": raw["num_meanbp"], "hrt": raw["num_hrt"], "resp": raw["num_resp"], "temp": raw["num_temp"],
        "wblc": raw["num_wblc"], "sod": raw["num_sod"], "crea": raw["num_crea"],
        "time": raw["time"].astype(float), "event": raw["event"].astype(float),
    }).dropna().reset_index(drop=True)
    covariates = list(frame.columns[:-2])
    continuous = ["age", "num_co", "meanbp", "hrt", "resp", "temp", "wblc", "sod", "crea"]
    return SurvivalDataset("support", frame, covariates, continuous,
                           "SurvSet support2 (Knaus et al. 1995; hbiostat.org, public use), DeepSurv's 14 covariates")


def _breast_cancer_frame(age, meno, size, grade, nodes, pgr, er, hormon) -> dict[str, pd.Series]:
    return {"age": age.astype(float), "meno": meno, "size": size, "grade": grade, "nodes": nodes.astype(float),
            "log_pgr": np.log1p(pgr.astype(float)), "log_er": np.log1p(er.astype(float)), "hormon": hormon}


_BREAST_CONTINUOUS = ["age", "nodes", "log_pgr", "log_er"]


def load_rotterdam() -> SurvivalDataset:
    """Rotterdam tumour bank breast-cancer patients (the offline stand-in for METABRIC).

    Provenance: SurvSet's ``rott2`` (2,982 primary breast-cancer patients operated 1978-1993, Rotterdam;
    Royston & Altman 2013; from the R package AF / survival, GPL). ``time``: months to recurrence or death
    (whichever first) or censoring; event rate about 43%.

    Columns: ``age`` (years), ``meno`` (1 post-menopausal), ``size`` (tumour size 0 <= 20 mm, 1 20-50 mm,
    2 > 50 mm), ``grade`` (1 grade 3, 0 grade 2), ``nodes`` (positive lymph nodes), ``log_pgr`` /
    ``log_er`` (log(1 + progesterone / oestrogen receptors, fmol/l)), ``hormon`` and ``chemo`` (0/1
    treatment). Continuous: age, nodes, log_pgr, log_er.
    """
    raw = _survset("rott2")
    frame = pd.DataFrame(_breast_cancer_frame(
        raw["num_age"], (raw["fac_meno"] == "post").astype(float),
        raw["fac_tsize"].map({"<=20mm": 0.0, ">20-50mmm": 1.0, ">50mm": 2.0}).astype(float),
        (raw["fac_grade"].astype(int) == 3).astype(float), raw["num_nodes"], raw["num_progesterone"],
        raw["num_estrogen"], (raw["fac_hormon"] == "yes").astype(float)))
    frame["chemo"] = (raw["fac_chemo"] == "yes").astype(float)
    frame["time"], frame["event"] = raw["time"].astype(float), raw["event"].astype(float)
    frame = frame.dropna().reset_index(drop=True)
    return SurvivalDataset("rotterdam", frame, list(frame.columns[:-2]), _BREAST_CONTINUOUS,
                           "SurvSet rott2 (Royston & Altman 2013; R package AF/survival, GPL)")


def load_gbsg2() -> SurvivalDataset:
    """German Breast Cancer Study Group 2 trial (686 patients), lifelines' ``load_gbsg2``.

    Provenance: Schumacher et al. 1994, shipped with lifelines (MIT) from R's TH.data (GPL). ``time``: days
    to recurrence or death, ``event`` = ``cens`` (1 event, 0 censored).
    Columns as :func:`load_rotterdam` without ``chemo`` (``grade``: 1 grade III; grades I/II coded 0).
    """
    from lifelines.datasets import load_gbsg2 as lifelines_gbsg2

    raw = lifelines_gbsg2()
    frame = pd.DataFrame(_breast_cancer_frame(
        raw["age"], (raw["menostat"] == "Post").astype(float),
        pd.cut(raw["tsize"], [0, 20, 50, np.inf], labels=[0.0, 1.0, 2.0]).astype(float),
        (raw["tgrade"] == "III").astype(float), raw["pnodes"], raw["progrec"], raw["estrec"],
        (raw["horTh"] == "yes").astype(float)))
    frame["time"], frame["event"] = raw["time"].astype(float), raw["cens"].astype(float)
    return SurvivalDataset("gbsg2", frame.reset_index(drop=True), list(frame.columns[:-2]), _BREAST_CONTINUOUS,
                           "lifelines load_gbsg2 (Schumacher et al. 1994; TH.data)")


_METABRIC_HOW = (
    "METABRIC (Curtis et al. 2012) as preprocessed by DeepSurv/pycox is not in any package reachable here. "
    "With pycox installed and internet access run "
    "`from pycox.datasets import metabric; metabric.read_df().to_csv('metabric.csv', index=False)`, "
    "or take DeepSurv's `metabric_IHC4_clinical_train_test.h5` from github.com/jaredleekatzman/DeepSurv "
    "(experiments/data/metabric); pycox's `metabric.feather` also works when pyarrow is installed."
)
_METABRIC_CONTINUOUS = ["x0", "x1", "x2", "x3", "x8"]


def load_metabric(path: str | Path | None = None, *, expected_sha256: str | None = None) -> SurvivalDataset:
    """METABRIC in the DeepSurv / pycox format (1,904 patients, 9 covariates). Never downloaded.

    File formats (chosen by suffix): pycox's frame as ``.csv`` or ``.feather`` (needs pyarrow) with columns
    ``x0 .. x8, duration, event``; DeepSurv's ``.h5`` (needs h5py) with groups ``train`` and ``test``, each
    holding ``x`` ``(m, 9)``, ``t`` and ``e`` (the two groups are concatenated).
    Covariates (DeepSurv's coding): ``x0 .. x3`` gene expression (MKI67, EGFR, PGR, ERBB2), ``x4 .. x7``
    binary (hormone treatment, radiotherapy, chemotherapy, ER positive), ``x8`` age. Continuous: x0-x3, x8.
    Licence: METABRIC clinical data via cBioPortal / EGA terms; DeepSurv's preprocessed file MIT.

    Args:
        path: the file; default ``metabric.csv`` in the cache folder (``$VIF_DATA_DIR`` or ``~/.cache/vif``).
        expected_sha256: digest to verify. No official digest of the pycox/DeepSurv export is known
            offline, so by default none is checked; the digest found is kept in ``SurvivalDataset.sha256``.

    Raises:
        DatasetNotFoundError: the file is missing; the message says how to obtain it.
        InputError: the checksum differs, the suffix is unknown, or the columns are not the expected ones.
    """
    file = locate("metabric.csv", dataset="METABRIC", how_to_get=_METABRIC_HOW, path=path,
                  expected_sha256=expected_sha256)
    suffix = file.suffix.lower()
    if suffix == ".csv":
        raw = _read_metabric_csv(file)
    elif suffix == ".feather":
        raw = pd.read_feather(file)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(file, "r") as handle:
            parts = [pd.DataFrame(np.asarray(handle[g]["x"]), columns=[f"x{k}" for k in range(9)]).assign(
                duration=np.asarray(handle[g]["t"]), event=np.asarray(handle[g]["e"])) for g in ("train", "test")]
        raw = pd.concat(parts, ignore_index=True)
    else:
        raise InputError(f"METABRIC file {file} has suffix {suffix!r}; use .csv, .feather or .h5 (see the docstring).")
    expected = [f"x{k}" for k in range(9)] + ["duration", "event"]
    if list(raw.columns) != expected:
        raise InputError(f"METABRIC file {file} has columns {list(raw.columns)}, expected {expected} (pycox layout).")
    frame = _validate_metabric(raw, file, first_line=2 if suffix == ".csv" else 1)
    return SurvivalDataset("metabric", frame, expected[:9], _METABRIC_CONTINUOUS,
                           f"METABRIC, DeepSurv/pycox export read from {file}",
                           sha256=expected_sha256 or sha256(file))  # locate() verified a given digest


def _read_metabric_csv(file: Path) -> pd.DataFrame:
    """``pd.read_csv`` with every cell kept as text, so that :func:`_validate_metabric` can name a bad row."""
    check_text(file, "METABRIC file", "expected UTF-8 CSV with a header x0,...,x8,duration,event (export with to_csv).")
    return pd.read_csv(file, dtype=str, keep_default_na=False)


def _validate_metabric(raw: pd.DataFrame, file: Path, first_line: int) -> pd.DataFrame:
    """Numeric, finite covariates; ``duration >= 0``; ``event`` in {0, 1}. Zero durations are dropped with a warning.

    ``first_line``: the file line of data row 0 (2 for a CSV with a header), used in the messages.
    """
    if len(raw) == 0:
        raise InputError(f"METABRIC file {file} has a header but no data rows.")
    frame = raw.rename(columns={"duration": "time"}).apply(pd.to_numeric, errors="coerce").astype(float)
    for column in frame.columns:
        bad = np.flatnonzero(~np.isfinite(frame[column].to_numpy()))
        if len(bad):
            raise InputError(f"METABRIC file {file}, line {bad[0] + first_line}: column {column!r} has the non-numeric "
                             f"or missing value {raw.iloc[bad[0]][raw.columns[frame.columns.get_loc(column)]]!r}.")
    checks = (("time", frame["time"] < 0, "a negative duration"),
              ("event", ~frame["event"].isin([0.0, 1.0]), "an event that is not 0 or 1"))
    for column, wrong, what in checks:
        bad = np.flatnonzero(wrong.to_numpy())
        if len(bad):
            raise InputError(f"METABRIC file {file}, line {bad[0] + first_line}: {what} "
                             f"({column} = {frame[column].iloc[bad[0]]:g}).")
    zero = np.flatnonzero(frame["time"].to_numpy() == 0)
    if len(zero):  # a zero duration has no place in a risk set
        warnings.warn(f"METABRIC file {file}: dropped {len(zero)} patient(s) with duration 0 (lines "
                      f"{', '.join(str(row + first_line) for row in zero[:10])}{' ...' if len(zero) > 10 else ''}).",
                      UserWarning, stacklevel=3)
    return frame[frame["time"] > 0].reset_index(drop=True)


DATASETS = {"support": load_support, "rotterdam": load_rotterdam, "gbsg2": load_gbsg2, "metabric": load_metabric}


def split(dataset: SurvivalDataset, *, seed: int = 0, test: float = 0.2, validation: float = 0.2) -> SurvivalSplit:
    """The paper's split: ``test`` of the patients for testing, ``validation`` of the rest for validation.

    A seeded permutation (``numpy.random.default_rng(seed)``); continuous covariates standardised with the
    training part's mean and (population) standard deviation.

    Raises:
        InputError: fractions outside (0, 1), a part that would be empty, or a seed that is not a
            non-negative integer.
    """
    seed = check_seed(seed)
    if not (isinstance(test, (int, float)) and isinstance(validation, (int, float)) and 0 < test < 1
            and 0 <= validation < 1):
        raise InputError(f"test must be in (0, 1) and validation in [0, 1), got test={test}, validation={validation}.")
    n = dataset.n
    permutation = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test * n))
    n_val = int(round(validation * (n - n_test)))
    rows_test, rows_val, rows_train = (permutation[:n_test], permutation[n_test:n_test + n_val],
                                       permutation[n_test + n_val:])
    if min(len(rows_test), len(rows_train)) == 0:
        raise InputError(f"{dataset.name} has {n} patients: too few for a split with test={test}.")
    x = dataset.frame[dataset.covariates].to_numpy(np.float64)
    is_continuous = np.isin(dataset.covariates, dataset.continuous)
    mean = np.where(is_continuous, x[rows_train].mean(0), 0.0)
    scale = np.where(is_continuous, x[rows_train].std(0), 1.0)
    scale = np.where(scale > 0, scale, 1.0)
    standard = (x - mean) / scale
    time, event = dataset.frame["time"].to_numpy(np.float64), dataset.frame["event"].to_numpy(np.float64)
    parts = {name: (standard[rows], time[rows], event[rows])
             for name, rows in (("train", rows_train), ("val", rows_val), ("test", rows_test))}
    return SurvivalSplit(dataset, rows_train, rows_val, rows_test, mean, scale, parts)
