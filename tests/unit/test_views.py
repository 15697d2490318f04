"""The typed views of flow/config/views.py promise only what every site kind's Spec and every
strategy's Options have (the schema builds those unions at run time, where mypy cannot see them)."""

from __future__ import annotations

import pytest

from fedgrid.executors import specs
from fedgrid.executors.common import SpecBase
from fedgrid.flow.config.views import StrategyBlock
from fedgrid.flow.strategies import option_models


def members(proto: type) -> set[str]:
    return {n for n in vars(proto) if not n.startswith("_")}


@pytest.mark.parametrize("spec", specs(), ids=lambda s: s.__module__.rsplit(".", 1)[-1])
def test_every_kind_spec_is_the_executor_view_and_has_its_discriminator(spec: type) -> None:
    assert issubclass(spec, SpecBase)  # the capabilities the driver reads of any kind
    assert "kind" in spec.model_fields


@pytest.mark.parametrize("options", option_models(), ids=lambda o: o.__qualname__)
def test_every_strategy_options_has_what_the_strategy_view_reads(options: type) -> None:
    assert members(StrategyBlock) == {"name", "model_dump"}
    assert "name" in options.model_fields and callable(options.model_dump)
