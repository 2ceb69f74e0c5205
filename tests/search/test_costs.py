"""The cost models every search plugs in: usage of a run, latency and energy from a profile, MACs."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from edgeskip.e2cm.costs import MacCosts
from edgeskip.errors import ConfigError
from edgeskip.profile import Profile
from edgeskip.search.costs import CostKey, MacsCost, ProfileCost, ProfileCosts, Usage, reuse_shares, usage_of
from edgeskip.variants import model_config


def _timing(ms: float) -> dict[str, Any]:
    return {"median_ms": ms, "mean_ms": ms, "p90_ms": ms, "std_ms": 0.0, "samples": 5, "energy_mj": 10 * ms}


def _profile(overhead: tuple[float, float] = (0.01, 0.1), extra: dict[str, float] | None = None,
             backend: dict[str, object] | None = None) -> Profile:
    """A profile of a 3-layer bundle with one exit, with round figures (energy 10 mJ per ms)."""
    pieces = {"embed": 0.2, "head": 0.05, "layer_00": 1.0, "layer_01": 2.0, "layer_02": 3.0, "agent_00": 0.01,
              "agent_01": 0.02, "agent_02": 0.03, "exit_00": 0.5, **(extra or {})}
    return Profile.from_dict({
        "device": "cpu", "energy": {"source": "estimate"}, "batches": {"1": {k: _timing(v) for k, v in pieces.items()}},
        "overhead": {"1": {"per_call_ms": overhead[0], "fixed_ms": overhead[1], "static_loop_ms": 7.0,
                           "sum_of_stages_ms": 6.5, "half_loop_ms": 4.0, "half_sum_of_stages_ms": 3.5, "passes": 20}},
        "bundle": {"model": "test", "fingerprint": "0" * 64, "target": "cpu", "removed": [], "exits": [0]},
        "memory": {"peak_rss_mb": 1.0, "peak_rss_before_mb": 1.0}, "backend": backend or {}, "host": {}, "settings": {},
        "created_utc": "2026-12-01T00:00:00Z"})


def test_cost_model_is_the_hand_sum() -> None:
    model = ProfileCosts.from_profile(_profile(), depth=3)
    assert model.entries[CostKey("layer", 1, 1)] == (2.0, 20.0) and model.batch_sizes == [1]
    usage = Usage(layers=(1.0, 0.5, 0.25), asked=(1.0, 1.0, 0.8), checked=(0.5,), reach_head=0.9)
    p = model.predict(usage, batch=1)
    stages = 0.2 + 0.05 * 0.9 + 1.0 + 2.0 * 0.5 + 3.0 * 0.25
    extras = 0.01 + 0.02 + 0.03 * 0.8 + 0.5 * 0.5
    calls = 1 + 1.75 + 0.9
    assert p.latency_ms == pytest.approx(stages + extras + 0.01 * calls + 0.1)
    assert p.energy_mj == pytest.approx(10 * (stages + extras))
    with pytest.raises(ConfigError, match="batch 8"):
        model.predict(usage, batch=8)
    with pytest.raises(ConfigError, match="usage covers 2 layers"):
        model.predict(Usage((1.0, 1.0), (0.0, 0.0), (0.0,), 1.0))


def test_usage_of_a_run() -> None:
    executed = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]], bool)
    exit_layer = np.array([-1, 1, -1, 0])  # input 1 left after layer 1, input 3 after layer 0
    u = usage_of(executed, exit_layer, steps=[(0, 0.1), (1, None), (2, 0.3)], exits=[0, 1], checked_exits=[0, 1])
    assert u.layers == (0.75, 0.25, 0.25)
    assert u.asked == (1.0, 0.0, 0.5)  # layer 1 runs without asking; 2 of 4 inputs are still in at layer 2
    assert u.checked == (0.75, 0.25) and u.reach_head == 0.5
    assert u.calls == pytest.approx(1 + 1.25 + 0.5)


def test_reuse_distances_and_warm_agents_in_the_model() -> None:
    # inputs one at a time: the layers run in the order 0 | 0 1 | 0 2 | - | 2
    executed = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1]], bool)
    # layer 0: first run (counts as d = 2), again with nothing between (d = 0), again after layer 1 (d = 1);
    # layer 2: first run, then right after itself
    assert reuse_shares(executed) == ((0.2, 0.2, 0.2), (0.0, 0.0, 0.2), (0.2, 0.0, 0.2))
    assert reuse_shares(np.ones((4, 3), bool)) == ((0.0, 0.0, 1.0),) * 3  # static: every other layer between
    u = usage_of(executed, np.full(5, -1), steps=[(0, 0.1), (1, 0.2), (2, 0.3)], exits=[], checked_exits=[])
    assert u.asked_after_skip == (0.0, 0.4, 0.8)  # asked where the previous layer (0, then 1) did not run
    model = ProfileCosts.from_profile(_profile(extra={"layer_01@0": 1.0, "agent_01@0": 0.005}), depth=3, reuse=True)
    assert model.entries[CostKey("layer", 1, 1, 0)] == (1.0, 10.0)
    static = Usage(layers=(1.0, 0.5, 0.25), asked=(0.0, 1.0, 0.0), checked=(0.0,), reach_head=1.0)
    reused = dataclasses.replace(static, reuse=((0.0, 0.0, 1.0), (0.25, 0.25, 0.0), (0.0, 0.0, 0.25)),
                                 asked_after_skip=(0.0, 0.5, 0.0))
    # layer 1: a quarter at d = 0 (1.0 ms), a quarter at d = 1 (1.5 ms, between d = 0 and the static 2.0 ms at
    # d = 2) instead of half at 2.0 ms; agent 1: half asked after a skip (0.005 instead of 0.02 ms)
    saved = 0.5 * 2.0 - (0.25 * 1.0 + 0.25 * 1.5) + 0.5 * (0.02 - 0.005)
    assert model.predict(reused).latency_ms == pytest.approx(model.predict(static).latency_ms - saved)
    assert model.predict(reused).energy_mj == pytest.approx(model.predict(static).energy_mj - 10 * saved)
    assert ProfileCosts.from_profile(_profile(), depth=3).reuse  # the default, set by measurement
    # reuse=False: every layer run is priced at its static-pass time
    plain = ProfileCosts.from_profile(_profile(extra={"layer_01@0": 1.0, "agent_01@0": 0.005}), depth=3, reuse=False)
    assert plain.predict(reused).latency_ms == pytest.approx(plain.predict(static).latency_ms - 0.5 * (0.02 - 0.005))
    with pytest.raises(ConfigError, match="unknown profile entry"):
        CostKey.parse("exit_01@0", 1)


def test_macs_cost_is_the_hand_sum() -> None:
    costs = MacCosts(embed=0.1, layers=(0.3, 0.3, 0.3), head=0.0, agents=(0.01,) * 3, exits=(0, 1), checks=(0.02, 0.02))
    usage = Usage(layers=(1.0, 0.5, 0.25), asked=(1.0, 1.0, 0.8), checked=(0.5, 0.25), reach_head=0.9)
    expected = 0.1 + 0.3 * 1.75 + 0.01 * 2.8 + 0.02 * 0.75
    assert MacsCost(costs)(usage) == {"compute": pytest.approx(expected)}
    static = MacCosts.from_config(model_config("vit-tiny"), (), "cls", agents=True)  # no exits: no checks
    assert static.exits == () and MacsCost(static)(Usage((1.0,) * 4, (0.0,) * 4, (), 1.0))["compute"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="does not fit"):
        MacsCost(costs)(Usage((1.0,), (0.0,), (), 1.0))


def test_profile_cost_needs_the_batch() -> None:
    with pytest.raises(ConfigError, match="--batch-sizes 8"):
        ProfileCost(ProfileCosts.from_profile(_profile(), depth=3), batch=8)


def test_fused_segments_and_the_static_piece_in_the_model() -> None:
    """A decision-free segment is one backend call where the profiled backend fuses; a static plan is the
    profile's one-call 'static' piece."""
    executed = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], bool)
    steps = [(0, None), (1, None), (2, 0.3)]  # layers 0 and 1 always run: one segment
    u = usage_of(executed, np.full(4, -1), steps, exits=[0], checked_exits=[])
    assert u.fused_calls == 1.0 and u.backend_calls(True) == u.calls - 1.0 and u.backend_calls(False) == u.calls
    checked = usage_of(executed, np.full(4, -1), steps, exits=[0], checked_exits=[0])  # an exit after layer 0
    assert checked.fused_calls == 0.0
    plain = ProfileCosts.from_profile(_profile(), depth=3)
    fusing = ProfileCosts.from_profile(_profile(backend={"backend": "onnxruntime", "fuses": True}), depth=3)
    assert not plain.fuses and fusing.fuses
    assert plain.predict(u).latency_ms - fusing.predict(u).latency_ms == pytest.approx(0.01 * 1.0)  # one call saved
    static = usage_of(np.ones((4, 3), bool), np.full(4, -1), [(0, None), (1, None), (2, None)], exits=[0],
                      checked_exits=[], static=True)
    whole = ProfileCosts.from_profile(_profile(extra={"static": 4.5}), depth=3)
    assert whole.predict(static).latency_ms == pytest.approx(4.5) and whole.predict(static).energy_mj == 45.0
    assert plain.predict(static).latency_ms > 6.0  # a profile without the piece: the sum of the stages


def test_every_path_is_priced_and_the_fastest_is_chosen() -> None:
    """The gate graph's terms replace the host's agents, checks and dispatch; the fastest path is the prediction; a
    static plan runs the monolithic model the profile timed whole."""
    gate = {"1": {"per_layer_ms": -0.1, "per_exit_ms": 0.2, "fixed_ms": -0.3, "all_ms": 6.0, "half_ms": 3.0}}
    model = ProfileCosts.from_profile(Profile.from_dict({**_profile().to_dict(), "gate": gate}), depth=3)
    assert model.gate == {1: (-0.1, 0.2, -0.3)}
    usage = Usage(layers=(1.0, 0.5, 0.25), asked=(1.0, 1.0, 0.8), checked=(0.5,), reach_head=0.9)
    paths = model.paths(usage)
    stages = 0.2 + 0.05 * 0.9 + 1.0 + 2.0 * 0.5 + 3.0 * 0.25
    assert paths["gate"].latency_ms == pytest.approx(stages - 0.1 * 1.75 + 0.2 * 0.5 - 0.3)
    assert paths["stages"].latency_ms == pytest.approx(ProfileCosts.from_profile(_profile(), depth=3).predict(usage).latency_ms)
    assert set(paths) == {"stages", "gate"} and model.predict(usage).path == "gate"  # 2.62 ms against 3.44
    assert model.predict(usage, path="stages") == paths["stages"]
    assert ProfileCost(model)(usage)["path"] == "gate"
    slow = ProfileCosts.from_profile(Profile.from_dict({**_profile().to_dict(), "gate": {
        "1": {**gate["1"], "fixed_ms": 1.0}}}), depth=3)
    assert slow.predict(usage).path == "stages"  # the graph's fixed cost now outweighs the host's
    near = ProfileCosts.from_profile(Profile.from_dict({**_profile().to_dict(), "gate": {
        "1": {**gate["1"], "fixed_ms": 0.4}}}), depth=3)
    assert near.paths(usage)["gate"].latency_ms < near.paths(usage)["stages"].latency_ms  # 3.32 ms against 3.44:
    assert near.predict(usage).path == "stages"  # faster by less than the model's error (PATH_MARGIN) is no reason
    with pytest.raises(ConfigError, match="cannot predict path 'monolithic'"):
        model.predict(usage, path="monolithic")
    static = Usage(layers=(1.0,) * 3, asked=(0.0,) * 3, checked=(0.0,), reach_head=1.0, static=True)
    whole = ProfileCosts.from_profile(Profile.from_dict({**_profile(extra={"static": 9.0}).to_dict(), "gate": gate}),
                                      depth=3)
    assert set(whole.paths(static)) == {"monolithic", "stages", "gate"}
    assert whole.predict(static).path == "monolithic"  # timed whole, though the sums here say less
    assert ProfileCosts.from_profile(_profile(), depth=3).paths(usage).keys() == {"stages"}  # no gate measured
    drifted = ProfileCosts.from_profile(Profile.from_dict({**_profile().to_dict(), "gate": {
        "1": {**gate["1"], "fixed_ms": -0.9}}}), depth=3)  # 15% of its every-layer call below zero: timings disagree
    assert drifted.gate == {} and drifted.paths(usage).keys() == {"stages"}
