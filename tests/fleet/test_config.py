"""The fleet config: YAML with command-line overrides; a bad key or value fails naming the key."""

from __future__ import annotations

import pytest

from fleet.broker import BrokerAddress
from fleet.config import load_config
from runtime.errors import ConfigError


def test_yaml_and_overrides(tmp_path):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("data_dir: /srv/fleet\nbroker_url: mqtts://broker.example:8883\nhttp_port: 9000\n"
                   "tls:\n  ca_file: /etc/ca.crt\n")
    c = load_config(cfg, http_port=9100, broker_url=None)
    assert c.http_port == 9100 and c.broker_url == "mqtts://broker.example:8883"
    assert c.base_url == "http://127.0.0.1:9100" and str(c.tls.ca_file) == "/etc/ca.crt"
    assert BrokerAddress.parse(c.broker_url) == BrokerAddress("broker.example", 8883, True)


@pytest.mark.parametrize("text,where", [("http_port: 99999\n", "http_port"), ("brokr_url: x\n", "brokr_url"),
                                        ("tls:\n  ca: x\n", "tls.ca_file"), ("- 1\n", "mapping")])
def test_bad_config_names_the_key(tmp_path, text, where):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(cfg)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://h:notaport", "x"])
def test_bad_broker_urls(url):
    with pytest.raises(ConfigError, match="broker URL"):
        BrokerAddress.parse(url)
