"""The manifest's serving settings: defaults, version policies, errors naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shipyard.errors import ServingConfigError
from shipyard.serving import AllPolicy, LatestPolicy, ServingConfig, SpecificPolicy
from tests.conftest import REPO


def test_defaults_when_the_manifest_has_no_serving_key() -> None:
    config = ServingConfig.from_manifest({"name": "m"})
    assert config.max_batch_size == 16 and config.max_queue_delay_ms == 0.0
    assert config.version_policy == LatestPolicy(latest=1)
    assert config.timeout_ms == 10_000 and config.instances == 1 and config.threads == 1


def test_version_policies_parse_and_select() -> None:
    parse = ServingConfig.from_manifest
    assert isinstance(
        parse({"serving": {"version_policy": {"all": True}}}).version_policy, AllPolicy
    )
    specific = parse({"serving": {"version_policy": {"specific": [1, 3]}}}).version_policy
    assert isinstance(specific, SpecificPolicy) and specific.select([1, 2, 3]) == [3, 1]
    assert LatestPolicy(latest=2).select([1, 3, 2]) == [3, 2, 1]


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        ({"max_batch_size": -1}, "serving.max_batch_size"),
        ({"max_batch_szie": 4}, "max_batch_szie"),
        ({"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}, "preferred_batch_sizes"),
        ({"version_policy": {"latest": 0}}, "version_policy"),
        ({"instances": 0}, "serving.instances"),
    ],
)
def test_invalid_serving_config_names_the_field(serving: dict, message: str) -> None:
    with pytest.raises(ServingConfigError, match=message):
        ServingConfig.from_manifest({"serving": serving})


def test_the_recipe_reads_serving_config_without_the_web_stack() -> None:
    """ServingConfig is package schema: recipes and builds never load the server's stack."""
    code = (
        "import sys, shipyard.recipe, shipyard.serving; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'starlette', 'uvicorn', 'prometheus_client', 'grpc', 'orjson', 'simdjson'}), "
        "sorted(m for m in sys.modules if m.split('.')[:2] == ['shipyard', 'serve']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[]", "[]"], run.stdout
