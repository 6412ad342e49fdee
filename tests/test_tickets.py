"""Tickets on disk: exact round trips, safe formats, and loud refusal of anything broken.

A ticket is what a lottery produces and what ``lth merge``/reruns consume, so a silently
wrong ticket (another architecture, a truncated file, a float "mask") would corrupt every
later experiment. The main fixture is a real ticket trained on scikit-learn's digits.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core import Mask
from lth_core.config import validate
from lth_core.files import json_digest, sha256_file
from lth_core.tickets.ticket import FILES, SELF, Ticket, is_ticket, load_ticket, save_ticket
from lth_models import mlp

TICKET_FILES = {"mask.safetensors", "init.safetensors", "final.safetensors", "ticket.json"}
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


@pytest.fixture(scope="module")
def lottery_dir(tmp_path_factory: pytest.TempPathFactory, make_tiny) -> Path:
    """A real one-round lottery on digits (mlp 64-32): round_0 dense, round_1 pruned."""
    raw = make_tiny()
    raw["name"] = "tickets"
    raw["trainer"].update(max_steps=20, val_check_interval=10)
    raw["lottery"]["rounds"] = 1
    out = tmp_path_factory.mktemp("lottery")
    run_lottery(validate(raw), out, say=lambda _: None)
    return out


def _model(hidden: list[int] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp((1, 8, 8), 10, hidden=hidden or [64, 32])


def _copy_ticket(src: Path, dst: Path) -> Path:
    """A fresh copy of a saved ticket folder, to damage without affecting other tests."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for n in a:
        assert b[n].dtype == a[n].dtype, n
        assert b[n].shape == a[n].shape, n
        assert b[n].device.type == "cpu", n
        assert b[n].contiguous().view(-1).view(torch.uint8).tolist() == a[n].contiguous().view(-1).view(torch.uint8).tolist(), f"{n} differs"


# --------------------------------------------------------------------------- round trip


def test_real_ticket_round_trips_bit_for_bit(lottery_dir: Path, tmp_path: Path) -> None:
    """A trained ticket saved and reloaded is the same ticket: mask, θ0, trained weights
    and metadata, bit for bit, with every tensor on the CPU."""
    model = _model()
    ticket = load_ticket(lottery_dir / "round_1", model)
    assert ticket.final is not None and 0.0 < ticket.weights_remaining < 1.0
    again = load_ticket(save_ticket(ticket, tmp_path / "copy"), model)

    assert again.mask == ticket.mask
    _assert_same_tensors(dict(ticket.mask.items()), dict(again.mask.items()))
    _assert_same_tensors(ticket.init, again.init)
    _assert_same_tensors(ticket.final, again.final)
    assert again.meta == ticket.meta
    # the metadata describes the tensors actually stored
    assert again.meta["weights_remaining"] == again.mask.density()
    assert again.meta["sparsity"] == again.mask.report()
    assert again.meta["round"] == 1 and again.meta["metrics"]["round"] == 1
    for which in FILES:
        assert again.meta["sha256"][which] == sha256_file(tmp_path / "copy" / f"{which}.safetensors")
    # a real ticket: pruned weights are exactly zero in the trained state
    for n, m in again.mask.items():
        assert bool((again.final[n][~m] == 0).all())


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]


@settings(max_examples=25, deadline=None)
@given(
    layers=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3),
    dtype_idx=st.integers(0, len(_DTYPES) - 1),
    with_final=st.booleans(),
    transpose=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    meta_value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
)
def test_round_trip_property(layers, dtype_idx, with_final, transpose, seed, meta_value) -> None:
    """Any shapes, dtypes (incl. non-contiguous views), with or without final weights,
    and JSON metadata survive save/load exactly."""
    g = torch.Generator().manual_seed(seed)
    dtype = _DTYPES[dtype_idx]
    mask = Mask({f"l{i}.weight": torch.rand(s, generator=g) < 0.5 for i, s in enumerate(layers)})

    def state() -> dict[str, torch.Tensor]:
        out = {}
        for i, s in enumerate(layers):
            w = (torch.randn(s, generator=g) * 100).to(dtype)
            out[f"l{i}.weight"] = w.t().contiguous().t() if transpose else w  # a non-contiguous view
            out[f"l{i}.bias"] = (torch.randn(s[0], generator=g) * 100).to(dtype)
        return out

    init, final = state(), (state() if with_final else None)
    meta = {"round": 3, "note": meta_value, "nested": {"list": [1, 2.5, "x"]}}
    with tempfile.TemporaryDirectory() as tmp:
        ticket = Ticket(mask, init, final, meta)
        save_ticket(ticket, Path(tmp) / "t")
        back = load_ticket(Path(tmp) / "t")
        assert back.mask == mask
        _assert_same_tensors(init, back.init)
        if with_final:
            _assert_same_tensors(final, back.final)
        else:
            assert back.final is None and not (Path(tmp) / "t" / "final.safetensors").exists()
        assert back.meta == ticket.meta
        assert back.meta["note"] == meta_value and back.meta["nested"] == meta["nested"]


# ----------------------------------------------------------------------- wrong model


def test_load_with_other_architecture_names_layer_and_shape(lottery_dir: Path) -> None:
    """Rewinding a ticket into a model of another width must fail, saying where."""
    with pytest.raises(LthError) as err:
        load_ticket(lottery_dir / "round_1", _model([64, 16]))
    msg = str(err.value)
    assert "net.3.weight" in msg and "(32, 64)" in msg and "(16, 64)" in msg


def test_load_with_other_depth_names_missing_layers(lottery_dir: Path) -> None:
    with pytest.raises(LthError) as err:
        load_ticket(lottery_dir / "round_1", _model([64, 32, 16]))
    msg = str(err.value)
    assert "net.7.weight" in msg and "does not fit" in msg


def test_check_fits_catches_bias_shape_mismatch(tmp_path: Path) -> None:
    """Masks cover weights only; a mismatch in a bias of init/final must still be caught."""
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["net.5.bias"] = torch.zeros(7)
    save_ticket(Ticket(Mask.ones_like(model), state, None, {}), tmp_path / "t")
    with pytest.raises(LthError, match=r"net\.5\.bias is \(7,\), model has \(10,\)"):
        load_ticket(tmp_path / "t", model)


# ------------------------------------------------------------------- damaged files


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # in the tensor data: the header stays valid
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("which", FILES)
@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["tampered", "truncated"])
def test_damaged_tensor_file_is_detected_by_checksum(lottery_dir: Path, tmp_path: Path, which: str, damage) -> None:
    """A changed or cut tensor file (bad disk, interrupted copy) is refused, naming the file."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    path = folder / f"{which}.safetensors"
    damage(path)
    with pytest.raises(LthError) as err:
        load_ticket(folder)
    msg = str(err.value)
    assert f"{which}.safetensors" in msg and "checksum" in msg


def test_flipped_byte_would_otherwise_load_silently(lottery_dir: Path, tmp_path: Path) -> None:
    """Why the checksum matters: a flipped data byte is still valid safetensors, so only
    the checksum can notice it."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    _flip_byte(folder / "final.safetensors")
    damaged = load_file(str(folder / "final.safetensors"))
    original = load_file(str(lottery_dir / "round_1" / "final.safetensors"))
    assert any(not torch.equal(damaged[n], original[n]) for n in original)


def test_corrupt_ticket_json_is_refused(lottery_dir: Path, tmp_path: Path) -> None:
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    (folder / "ticket.json").write_text('{"round": 1, "sha256": {')
    with pytest.raises(LthError, match="ticket.json is corrupt"):
        load_ticket(folder)


def rewrite_meta(folder: Path, meta: dict) -> None:
    """Write ``meta`` as ticket.json with a matching checksum of its own: a consistent
    record, so what the test changed is what the loader has to catch."""
    meta = {k: v for k, v in meta.items() if k != SELF}
    meta[SELF] = json_digest(meta)
    (folder / "ticket.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("which", FILES)
def test_missing_tensor_file_is_named(lottery_dir: Path, tmp_path: Path, which: str) -> None:
    """final.safetensors too: a deleted one used to load as a ticket with final=None, and a
    rerun reusing it crashed later with a TypeError."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    (folder / f"{which}.safetensors").unlink()
    with pytest.raises(LthError, match=f"missing {which}.safetensors \\(ticket.json lists it\\); delete {folder}/ticket.json and rerun"):
        load_ticket(folder)


@pytest.mark.parametrize("which", FILES)
def test_a_tensor_file_without_a_recorded_checksum_is_refused(lottery_dir: Path, tmp_path: Path, which: str) -> None:
    """A ticket.json lacking a sha256 entry used to skip the check silently."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    meta = json.loads((folder / "ticket.json").read_text())
    del meta["sha256"][which]
    rewrite_meta(folder, meta)
    with pytest.raises(LthError, match=f"ticket.json records no sha256 for {which}.safetensors, so it cannot be verified"):
        load_ticket(folder)
    del meta["sha256"]
    rewrite_meta(folder, meta)
    with pytest.raises(LthError, match="ticket.json records no sha256 of the ticket's tensor files"):
        load_ticket(folder)


def test_a_ticket_saved_without_trained_weights_loads_without_final(tmp_path: Path) -> None:
    """The one case without final.safetensors: ticket.json then lists none, so none is missing."""
    model = _model()
    save_ticket(Ticket(Mask.ones_like(model), model.state_dict(), None, {}), tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "ticket.json").read_text())
    assert set(meta["sha256"]) == {"mask", "init"}
    assert load_ticket(tmp_path / "t", model).final is None


@pytest.mark.parametrize("content,what", [
    (b'[{"round": 1}]', "a JSON list, not the object lth writes"),
    (b"42", "a JSON int, not the object lth writes"),
    (b'"ticket"', "a JSON str, not the object lth writes"),
    (b'{"round": 1, "note": "\xff\xfe"}', "not UTF-8 text (byte 22)"),
])
def test_ticket_json_of_another_shape_or_encoding_is_one_line(lottery_dir: Path, tmp_path: Path, content: bytes, what: str) -> None:
    """Valid JSON that is not an object, or bytes that are not UTF-8, used to give an
    AttributeError/UnicodeDecodeError traceback."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    (folder / "ticket.json").write_bytes(content)
    with pytest.raises(LthError) as err:
        load_ticket(folder)
    assert str(err.value) == f"{folder}/ticket.json is corrupt: {what}; delete {folder}/ticket.json and rerun the same `lth run` to train that round again"


def test_ticket_json_carries_a_checksum_of_its_own_content(lottery_dir: Path, tmp_path: Path) -> None:
    """A changed number in ticket.json (its metrics feed summary.json on a rerun) is
    caught, as checkpoint.json's own checksum catches a changed checkpoint."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    meta = json.loads((folder / "ticket.json").read_text())
    assert meta[SELF] == json_digest({k: v for k, v in meta.items() if k != SELF})
    meta["metrics"]["test_acc"] = 0.99
    (folder / "ticket.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    with pytest.raises(LthError, match="ticket.json does not match its own checksum: the file was altered"):
        load_ticket(folder)


def test_a_ticket_written_before_its_own_checksum_existed_still_loads(lottery_dir: Path, tmp_path: Path) -> None:
    """Earlier versions wrote no ticket_sha256: such tickets load, and their tensor files
    are still verified."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    meta = json.loads((folder / "ticket.json").read_text())
    del meta[SELF]
    (folder / "ticket.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    old = load_ticket(folder, _model())
    _assert_same_tensors(old.final, load_ticket(lottery_dir / "round_1").final)
    assert SELF not in old.meta
    _flip_byte(folder / "final.safetensors")
    with pytest.raises(LthError, match="final.safetensors does not match its checksum"):
        load_ticket(folder)


# --------------------------------------------------------------- not a ticket at all


def test_folder_without_ticket_json_is_refused(lottery_dir: Path, tmp_path: Path) -> None:
    """An unfinished round (tensors written, ticket.json not yet) is not a ticket."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "unfinished")
    (folder / "ticket.json").unlink()
    assert not is_ticket(folder)
    with pytest.raises(LthError) as err:
        load_ticket(folder)
    assert "not a ticket" in str(err.value) and "ticket.json" in str(err.value) and str(folder) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LthError, match="no ticket.json"):
        load_ticket(empty)
    with pytest.raises(LthError, match="no ticket.json"):
        load_ticket(tmp_path / "does-not-exist")


def test_mask_with_non_bool_dtype_is_refused(lottery_dir: Path, tmp_path: Path) -> None:
    """A mask stored as uint8/float (e.g. written by another tool) is refused even when its
    checksum is consistent: multiplying by it is not the same as masking."""
    folder = _copy_ticket(lottery_dir / "round_1", tmp_path / "t")
    masks = load_file(str(folder / "mask.safetensors"))
    save_file({n: m.to(torch.uint8) for n, m in masks.items()}, str(folder / "mask.safetensors"))
    meta = json.loads((folder / "ticket.json").read_text())
    meta["sha256"]["mask"] = sha256_file(folder / "mask.safetensors")
    rewrite_meta(folder, meta)
    with pytest.raises(LthError) as err:
        load_ticket(folder)
    assert "non-bool" in str(err.value) and "net.1.weight" in str(err.value)
    with pytest.raises(TypeError, match="must be bool"):
        Ticket(Mask({n: m.float() for n, m in masks.items()}), {}, None, {})


# ----------------------------------------------------------------- no pickle on disk


def test_tickets_are_safetensors_and_json_only(lottery_dir: Path) -> None:
    """No pickle anywhere: every tensor file parses as safetensors, metadata as JSON, and
    the run writes no .pt/.pkl/.ckpt (loading a pickle can execute code)."""
    tickets = sorted(p.parent for p in lottery_dir.rglob("ticket.json"))
    assert [t.name for t in tickets] == ["round_0", "round_1"]
    for folder in tickets:
        names = {p.name for p in folder.iterdir() if p.is_file()}
        assert TICKET_FILES <= names
        assert names - TICKET_FILES <= {"curves.json"}, f"unexpected files {names - TICKET_FILES}"
        meta = json.loads((folder / "ticket.json").read_text())
        for which in FILES:
            path = folder / f"{which}.safetensors"
            head = path.read_bytes()[:8]
            assert not head.startswith(b"\x80") and not head.startswith(b"PK"), "pickle/zip magic"
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                assert keys and all(f.get_tensor(k).device.type == "cpu" for k in keys)
            assert set(meta["sha256"]) == set(FILES)
        json.loads((folder / "curves.json").read_text())
    stray = [p for p in lottery_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    assert stray == []
    assert not list(lottery_dir.rglob(".*.tmp*")), "temporary files were left behind"
