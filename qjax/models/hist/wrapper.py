"""Qlib's HIST wrapper (pytorch_hist) as a spec: daily batches with each stock's concept row."""

from __future__ import annotations

import dataclasses

import pandas as pd

from qjax.data.samples import Samples, with_keyword_inputs
from qjax.models.gats.wrapper import BASE_MODEL_DEFAULTS, MODULE_ARGS, PretrainedBase
from qjax.models.hist.concepts import concept_rows, concept_table
from qjax.models.spec import Adapter, DailyBatches, ModelSpec, SequenceInput, pick


@dataclasses.dataclass(frozen=True)
class ConceptInputs(Adapter):
    """Every sample carries its stock's ``stock2concept`` row as the keyword ``concept_matrix``."""

    def samples(self, kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
        table = concept_table(kw["stock2concept"], kw["stock_index"])
        return with_keyword_inputs(samples, concept_matrix=concept_rows(table, index))


HIST = ModelSpec(
    "qlib.contrib.model.pytorch_hist.HIST",
    {**BASE_MODEL_DEFAULTS, "metric": "ic", "stock2concept": None, "stock_index": None},
    pick(*MODULE_ARGS),
    adapters=(SequenceInput("d_feat"), DailyBatches(), ConceptInputs(), PretrainedBase()),
)
