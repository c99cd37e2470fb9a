"""The GPU benchmark tables' options run end to end on tiny CPU shapes (timings not checked): the layer
table with fp32 and bf16 input (``neuron.py --dtypes``) and the per-method training-step table
(``train_step.py --recipes``)."""
import pytest

from test_benchmarks import run_benchmark


def test_layer_table_with_fp32_and_bf16_input(tmp_path):
    results = run_benchmark("neuron", ["--steps", "2", "--batch", "2", "--channels", "3", "--size", "4", "--repeats",
                                       "1", "--warmup", "0", "--dtypes", "fp32", "bf16", "--only", "ours_fused",
                                       "--no_spikingjelly", "--output", str(tmp_path / "n.json")])
    fp32, bf16 = results["tables"]
    assert [row["dtype"] for row in fp32 + bf16] == ["fp32"] * 2 + ["bf16"] * 2
    assert all(row["x_fp32"] == 1.0 for row in fp32)
    for row in bf16:
        same = next(r for r in fp32 if r["layer"] == row["layer"])
        assert row["x_fp32"] == pytest.approx(row["median_ms"] / same["median_ms"])
    fused = next(row for row in fp32 if row["layer"] == "ours_fused")
    assert fused["saved_MB"] * 2 ** 20 == 2 * 2 * 3 * 4 * 4 * 4 + 4  # the fused LIF saves its input and the decay


def test_per_method_training_step_table(tmp_path):
    results = run_benchmark("train_step", ["--recipes", "mpd_agl_cifar10", "--width", "0.0625",
                                           "--batch", "1", "--repeats", "1", "--warmup", "0", "--variants",
                                           "ann_relu", "--output", str(tmp_path / "t.json")])
    rows = results["rows"]
    assert [row["variant"] for row in rows] == ["ann_relu", "recipe:mpd_agl_cifar10"]
    assert {row["steps"] for row in rows} == {2}  # the recipe's own T
    assert all(row["x_ann_compiled"] is None and row["saved_MB"] > 0 for row in rows)
    with pytest.raises(SystemExit, match="no recipe"):
        run_benchmark("train_step", ["--recipes", "no_such_recipe", "--output", str(tmp_path / "t.json")])
