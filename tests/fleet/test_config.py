"""The fleet config: YAML with command-line overrides; a bad key or value fails naming the key."""

from __future__ import annotations

import pytest

from fleet.config import load_config
from runtime.errors import ConfigError
from runtime.mqtt import parse_url


def test_yaml_and_overrides(tmp_path):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("data_dir: /srv/fleet\nbroker_url: mqtts://broker.example:8883\nhttp_port: 9000\n"
                   "tls:\n  ca_file: /etc/ca.crt\n")
    c = load_config(cfg, http_port=9100, broker_url=None)
    assert c.http_port == 9100 and c.broker_url == "mqtts://broker.example:8883"
    assert c.base_url == "http://127.0.0.1:9100" and str(c.tls.ca_file) == "/etc/ca.crt"
    assert parse_url(c.broker_url) == ("broker.example", 8883, True)


@pytest.mark.parametrize("text,where", [
    ("http_port: 99999\n", "fleet.yaml:1: http_port: Input should be less than or equal to 65535"),
    ("data_dir: x\nbrokr_url: x\n", "fleet.yaml:2: brokr_url: Extra inputs are not permitted"),
    ("tls:\n  ca: x\n", "fleet.yaml:2: tls.ca: Extra inputs are not permitted"),
    ("broker_url: mqtt://b:1883\ntls:\n  ca_file: /etc/ca.crt\n", "fleet.yaml:1: (top): tls is set but broker_url is not mqtts://"),
    ("broker_url: tcp://b:1883\n", "fleet.yaml:1: broker_url: broker URL 'tcp:"),
    ("prefix: a\nexit_criteria:\n  max_fp_rate: 2\n", "fleet.yaml:3: exit_criteria.max_fp_rate: Input should be"),
    ("- 1\n", "fleet.yaml: expected a mapping"), ("a: [1\n", "fleet.yaml:2: not valid YAML")])
def test_bad_config_names_file_line_and_key(tmp_path, text, where):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value).startswith(str(tmp_path / where)), str(err.value)


def test_bad_option_names_the_key():
    with pytest.raises(ConfigError, match=r"^fleet config \(command-line options\): http_port: "):
        load_config(None, http_port=-1)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://h:notaport", "x"])
def test_bad_broker_urls(url):
    with pytest.raises(ConfigError, match="broker URL"):
        parse_url(url)
    with pytest.raises(ConfigError, match="broker_url: .*broker URL"):
        load_config(None, broker_url=url)
