"""cpu_linear.RowsLinear: the same layer as nn.Linear (outputs, gradients, state dict, saved files), faster only
where its transposed copy is used, and never stale after the weight changes."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from p2bot_utils import cpu_linear
from p2bot_utils.cpu_linear import RowsLinear, install, transposed_copies, uses_copy


def _layer(bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(24, 40, bias=bias)
    install(layer)
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 16, 63, 64, 130])
def test_outputs_equal_nn_linear_for_every_row_count(rows, bias):
    layer = _layer(bias)
    x = torch.randn(rows, 24)
    with torch.no_grad():
        outside = layer(x)
        assert "_weight_t" not in layer.__dict__  # no scope: F.linear, no copy
        with transposed_copies(layer):
            got = layer(x)
            assert ("_weight_t" in layer.__dict__) == (4 <= rows <= 63)  # made only where it is used
        assert "_weight_t" not in layer.__dict__  # freed with the scope
    for y in (got, outside):
        torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)


def test_batched_3d_input_counts_every_row():
    layer = _layer()
    x = torch.randn(8, 2, 24)  # 8 beams x 2 positions = 16 rows
    with torch.no_grad(), transposed_copies(layer):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
        assert "_weight_t" in layer.__dict__


def test_when_the_copy_is_used():
    rows = lambda n, **kw: torch.zeros(n, 5, **kw)  # noqa: E731
    with torch.no_grad():
        assert [uses_copy(rows(n)) for n in (1, 3, 4, 63, 64)] == [False, False, True, True, False]
        assert not uses_copy(rows(8, dtype=torch.float64))  # fp32 only (the case measured)
        assert not uses_copy(torch.zeros(0, 5))
    assert not uses_copy(rows(8))  # gradient on: training keeps F.linear


@pytest.mark.parametrize("impl", [{"fused": True}, {"foreach": False}, {"foreach": True}])
def test_no_copy_outlives_its_scope_whatever_updates_the_weight(impl):
    """Self-play decodes, takes an Adam step, decodes again. PyTorch's fused Adam changes the weights in place
    WITHOUT bumping their version counter (checked below), so a copy cached across steps would be stale: each
    scope makes its own."""
    layer = _layer()
    x = torch.randn(8, 24)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1, **impl)
    with torch.no_grad(), transposed_copies(layer):
        before = layer(x)
    version = layer.weight._version
    layer(x).sum().backward()
    opt.step()
    if impl.get("fused"):
        assert layer.weight._version == version  # why a version-keyed cache would have gone stale
    with torch.no_grad(), transposed_copies(layer):
        after = layer(x)
    torch.testing.assert_close(after, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, after)
    with torch.no_grad(), transposed_copies(layer):
        layer.weight = nn.Parameter(torch.zeros_like(layer.weight))  # a new tensor, before the first product
        torch.testing.assert_close(layer(x), layer.bias.expand(8, -1))


def test_nested_scopes_share_the_outer_copies():
    layer = _layer()
    x = torch.randn(8, 24)
    with torch.no_grad(), transposed_copies(layer):
        layer(x)
        outer = layer.__dict__["_weight_t"]
        with transposed_copies(layer):
            layer(x)
            assert layer.__dict__["_weight_t"] is outer
        assert layer.__dict__["_weight_t"] is outer  # the inner scope did not free the outer's copy
    assert "_weight_t" not in layer.__dict__ and "_scope" not in layer.__dict__


def test_training_gradients_are_nn_linears():
    layer, ref = _layer(), nn.Linear(24, 40)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(8, 24)
    with transposed_copies(layer):  # even inside a scope: gradient on, F.linear
        layer(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    assert "_weight_t" not in layer.__dict__  # gradient on: no copy made
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_install_changes_the_class_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6)), nn.Linear(6, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert install(net) == 3 and install(net) == 0  # idempotent
    assert all(type(m) is RowsLinear for m in net.modules() if isinstance(m, nn.Linear))
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad(), transposed_copies(net):
        net(torch.randn(8, 4))
        twin = copy.deepcopy(net)  # carries the scope's copies ...
    with torch.no_grad():
        twin[0].weight.mul_(2.0)  # ... which its next scope must not reuse
        x = torch.randn(8, 4)
        with transposed_copies(twin), transposed_copies(net):
            torch.testing.assert_close(twin[0](x), F.linear(x, twin[0].weight, twin[0].bias), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(net[0](x), F.linear(x, net[0].weight, net[0].bias), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny Llama-architecture Transmitter (SmolLM2's family: every projection an nn.Linear)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from p2bot_utils.backbones import load_causal_lm
    from p2bot_utils.transmitter import Transmitter, TransmitterConfig

    _, tok = load_causal_lm("tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    return Transmitter.from_backbone(lm, tok, TransmitterConfig(max_len=64, max_reply_tokens=8)).eval()


def test_a_transmitter_decodes_the_same_replies_with_and_without_the_copies(tiny_llama, monkeypatch):
    """Beam search + Eq. 3 on 3 contexts x 2 beams (6 rows per step: the copies are used) gives the same replies
    and scores as F.linear everywhere."""
    from p2bot_utils.decoding import generate_replies

    assert all(type(m) is RowsLinear for m in tiny_llama.lm.modules() if isinstance(m, nn.Linear))
    personas = [["i like cats ."], ["i hate rain ."], ["i play the guitar ."]]
    histories = [["hi there"], ["hello ! how are you ?"], ["what do you do ?"]]
    kw = dict(num_beams=2, max_new_tokens=6, alpha=0.1, batch_size=3, return_beams=True)
    used = []
    real = cpu_linear.uses_copy
    monkeypatch.setattr(cpu_linear, "uses_copy", lambda x: used.append(real(x)) or used[-1])
    fast = generate_replies(tiny_llama, personas, histories, **kw)
    assert any(used)  # the beam search ran in a scope and used the copies
    assert not any("_weight_t" in m.__dict__ for m in tiny_llama.lm.modules())  # freed afterwards
    monkeypatch.setattr(cpu_linear, "MIN_ROWS", 10 ** 9)  # F.linear for every product
    plain = generate_replies(tiny_llama, personas, histories, **kw)
    for f, p in zip(fast, plain):
        assert f["beams"] == p["beams"] and f["chosen"] == p["chosen"]
        assert f["lm_norm"] == pytest.approx(p["lm_norm"], abs=1e-5)
        assert f["nup_logp"] == pytest.approx(p["nup_logp"], abs=1e-5)


def test_saved_files_are_unchanged(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    from p2bot_utils.transmitter import Transmitter

    with torch.no_grad(), transposed_copies(tiny_llama.lm):
        tiny_llama.lm(torch.ones(8, 1, dtype=torch.long))  # copies exist while saving: they must not be saved
        tiny_llama.save_pretrained(tmp_path / "m")
    saved = load_file(tmp_path / "m" / "model.safetensors")
    assert not any("weight_t" in k for k in saved)
    back = Transmitter.from_pretrained(tmp_path / "m")
    assert all(type(m) is RowsLinear for m in back.lm.modules() if isinstance(m, nn.Linear))
    for k, v in tiny_llama.lm.state_dict().items():
        assert torch.equal(back.lm.state_dict()[k], v), k


def test_bench_linear_reports_both_products():
    from p2bot_utils import bench

    res = bench.linear(in_features=16, out_features=32, rows="1,8", repeats=2)
    for m in (1, 8):
        assert res[f"rows_{m}_gflops_linear"] > 0 and res[f"rows_{m}_gflops_copy"] > 0
        assert res[f"rows_{m}_copy_speedup"] == pytest.approx(
            res[f"rows_{m}_gflops_copy"] / res[f"rows_{m}_gflops_linear"])


def test_sampling_after_a_fused_adam_step_follows_the_updated_policy(tiny_llama):
    """Self-play's contract (Eq. 5): the log-probs ``sample_replies`` returns are those ``sequence_log_probs``
    recomputes with gradient, also after an optimizer step. (The version-keyed cache this module first had
    broke it: fused Adam does not bump the version counter, and B kept sampling from its first weights.)"""
    from p2bot_utils.decoding import sample_replies, sequence_log_probs

    model = copy.deepcopy(tiny_llama)
    personas = [["i like cats ."]] * 4 + [["i hate rain ."]] * 4  # 8 rows: the copies are used
    histories = [["hi there"]] * 8
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05, fused=True)
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        s = sample_replies(model, personas, histories, max_new_tokens=5, generator=g)
        lp = sequence_log_probs(model, personas, histories, s.token_ids)
        for a, b in zip(s.log_probs, lp):
            torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-4)
        opt.zero_grad()
        (-sum(x.sum() for x in lp)).backward()
        opt.step()
