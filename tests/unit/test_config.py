from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extproc.cli import main
from extproc.config.load import load_config
from extproc.config.model import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "examples" / "extproc.yaml").read_text())


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "examples" / "extproc.yaml")
    assert [p.name for p in cfg.providers] == ["demo", "demo-anthropic", "openai", "anthropic"]
    anthropic = cfg.provider("anthropic")
    assert (anthropic.auth_header, anthropic.auth_scheme) == ("x-api-key", "")
    assert (cfg.provider("openai").auth_header, cfg.provider("openai").auth_scheme) == ("authorization", "Bearer ")
    assert cfg.tls is not None and cfg.tls.generated


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda c: c["providers"][1].update(base_url="ftp://x"), "providers[1].base_url", "http:// or https://"),
        (lambda c: c["providers"][0].update(bsae_url="x"), "providers[0].bsae_url", "did you mean 'base_url'"),
        (lambda c: c["providers"][3].update(prefix="/openai"), "providers[3].prefix", "overlaps providers[2]"),
        (lambda c: c["providers"][2].update(name="demo"), "providers[2].name", "already defined"),
        (lambda c: c["identity"]["issuers"][0].pop("audiences"), "identity.issuers[0]", "audience"),
        (lambda c: c["identity"]["issuers"][0].update(algorithms=["HS256"]), "identity.issuers[0].algorithms[0]",
         "not allowed"),
        (lambda c: c["listeners"]["admin"].update(port=10000), "listeners.admin.port", "already used"),
        (lambda c: c["listeners"]["http"].update(port=70000), "listeners.http.port", "between 0 and 65535"),
        (lambda c: c["providers"][0].update(credential={"env": "A", "file": "/b"}), "providers[0].credential",
         "exactly one"),
        (lambda c: c.update(providers=[]), "providers", "at least one provider"),
        (lambda c: c["redis"].update(url="http://x"), "redis.url", "redis://"),
        (lambda c: c.update(envoy={"max_message_timeout_seconds": 900, "stream_idle_timeout_seconds": 600}),
         "envoy.stream_idle_timeout_seconds", "longer than"),
    ],
)
def test_errors_point_at_the_key(tmp_path: Path, mutate: object, path: str, fragment: str) -> None:
    import copy

    data = copy.deepcopy(BASE)
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, yaml.safe_dump(data, sort_keys=False)))
    assert exc.value.path == path
    assert fragment in exc.value.message
    assert str(exc.value).startswith(str(tmp_path / "cfg.yaml") + ":")
    assert exc.value.line is not None


def test_line_numbers_are_real(tmp_path: Path) -> None:
    text = (REPO / "examples" / "extproc.yaml").read_text().replace("base_url: https://api.openai.com/v1",
                                                                    "base_url: nope")
    lineno = next(i for i, line in enumerate(text.splitlines(), 1) if "base_url: nope" in line)
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    assert exc.value.line == lineno


def test_invalid_yaml_and_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "providers: [\n  - name: x\n  bad"))
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- just a list"))


def test_env_expansion() -> None:
    import copy

    data = copy.deepcopy(BASE)
    data["redis"]["url"] = "${MY_REDIS:-redis://fallback:6379/0}"
    assert parse_config(data, env={}).redis_url == "redis://fallback:6379/0"
    assert parse_config(data, env={"MY_REDIS": "redis://set:1/2"}).redis_url == "redis://set:1/2"
    data["redis"]["url"] = "${NOT_SET_ANYWHERE}"
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        parse_config(data, env={})


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(REPO / "examples" / "extproc.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = _write(tmp_path, "version: 1\nproviders:\n  - name: Bad Name\n    base_url: http://x\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "providers[0].name" in err and ":3:" in err


@pytest.mark.parametrize(
    "path",
    sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("examples/*.yaml"), *REPO.glob("k8s/**/extproc.yaml")]
           if "providers:" in p.read_text()),
)
def test_every_shipped_configuration_passes_config_check(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The whole check: base sections and policy, masking, approvals, recording and tools.
    assert main(["config", "check", str(REPO / path)]) == 0, capsys.readouterr().err
