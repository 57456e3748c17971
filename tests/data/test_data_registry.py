"""Dataset-string registry: parsing, conversion, errors, and construction the way upstream's make_dataset does it."""

import pytest
import torch

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.registry import discard_target, parse_dataset_str, register_dataset, registered_datasets


def test_unknown_name_returns_none():
    assert parse_dataset_str("ImageNet:split=TRAIN:root=/x") is None


def test_cpjump1_registered_and_values_converted():
    assert registered_datasets()["CPJUMP1"] is CPJUMP1Dataset
    cls, kw = parse_dataset_str(
        "CPJUMP1:root=/d:plates=BR1,BR2:channels=DNA,ER:percentile_low=1:sites_per_well=9:wells=A01:seed=3"
    )
    assert cls is CPJUMP1Dataset
    assert kw == {
        "root": "/d",
        "plates": ["BR1", "BR2"],
        "channels": ["DNA", "ER"],
        "percentile_low": 1.0,
        "sites_per_well": 9,
        "wells": ["A01"],
        "seed": 3,
    }
    # a group name stays a string; a single plate still becomes a list; `none` -> None for None defaults
    _, kw = parse_dataset_str("CPJUMP1:root=/d:channels=fluo:plates=BR1:store=none")
    assert kw["channels"] == "fluo" and kw["plates"] == ["BR1"] and kw["store"] is None
    _, kw = parse_dataset_str("CPJUMP1:channel_map=6/Brightfield,8/HighZBF")
    assert kw["channel_map"] == {6: "Brightfield", 8: "HighZBF"}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key 'colour'.*valid keys: .*channels.*plates.*root"):
        parse_dataset_str("CPJUMP1:root=/d:colour=red")


@pytest.mark.parametrize(
    "text, match",
    [
        ("CPJUMP1:root=/d:root=/e", "given twice"),
        ("CPJUMP1:root", "not key=value"),
        ("CPJUMP1:transform=x", "set by make_dataset"),
        ("CPJUMP1:percentile_low=abc", "percentile_low"),
    ],
)
def test_malformed_strings(text, match):
    with pytest.raises(ValueError, match=match):
        parse_dataset_str(text)


def test_inferred_converters_for_other_registrations():
    @register_dataset("_TestDS")
    class _TestDS:
        def __init__(self, *, transform=None, target_transform=None, n: int = 1, flag: bool = False, names: list = ()):
            self.n, self.flag, self.names = n, flag, names

    cls, kw = parse_dataset_str("_TestDS:n=4:flag=yes:names=a,b")
    assert cls is _TestDS and kw == {"n": 4, "flag": True, "names": ["a", "b"]}
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("_TestDS")(type("Other", (), {}))


def test_built_like_make_dataset(synth):
    """Upstream: class_, kwargs = _parse_dataset_str(s); class_(transform=..., target_transform=..., **kwargs)."""
    cls, kwargs = parse_dataset_str(f"CPJUMP1:root={synth.out_dir}:plates={','.join(synth.plates)}:channels=all")
    ds = cls(transform=None, target_transform=discard_target, **kwargs)
    img, target = ds[0]
    assert len(ds) == sum(synth.n_sites.values())
    assert img.shape == (8, 32, 32) and img.dtype == torch.float32
    assert target == ()


def test_upstream_make_dataset_when_patched(synth):
    """Through upstream's real make_dataset once the lead's loader patch is installed (skipped before that)."""
    loaders = pytest.importorskip("dinov2.data.loaders")
    if not getattr(loaders._parse_dataset_str, "__dinov2_cell_patched__", False):
        pytest.skip("loader patch not applied in this checkout")
    ds = loaders.make_dataset(dataset_str=f"CPJUMP1:root={synth.out_dir}:channels=bf", transform=None)
    assert ds.num_channels == 3 and len(ds) > 0
