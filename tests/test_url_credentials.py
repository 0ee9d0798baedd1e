"""Credentials in config URLs are refused, with where they belong instead, and never echoed."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.typed import ConfigError
from pipeline.url_credentials import redact_url, url_credentials

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCY"


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs",
        f"https://user:{SECRET}@api.example.com/v1",
        f"https://{SECRET}@api.example.com/v1",  # a token pasted as the user part
        f"https://proxy.example.com/v1?api_key={SECRET}",
        f"https://proxy.example.com/v1?api-key={SECRET}&x=1",
        f"https://proxy.example.com/v1?key={SECRET}",
        f"https://proxy.example.com/v1?access_token={SECRET}",
        f"https://bucket.s3.amazonaws.com/a.yaml?X-Amz-Credential=AKIA%2F&X-Amz-Signature={SECRET}",
        f"https://acct.blob.core.windows.net/c/a.yaml?sv=2022&sig={SECRET}",
        f"postgresql://mlflow:{SECRET}@db.example.com/mlflow",
        f"http://[::1:8000:mlflow:{SECRET}@",  # unparsable, still recognised
    ],
)
def test_urls_with_credentials_are_found_and_redacted(url):
    assert url_credentials(url)
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "runs",
        "/data/user@example.com/runs",
        "C:\\data\\runs",
        "s3://bucket/runs?region=eu-west-1&endpoint_override=minio:9000",
        "http://127.0.0.1:8000/v1",
        "postgresql://mlflow@db.example.com/mlflow?sslkey=/etc/client.key",  # a user name, a key *file*
        "sqlite:////abs/mlflow.db",
    ],
)
def test_plain_urls_and_paths_carry_none(url):
    assert url_credentials(url) == []
    assert redact_url(url) == url


@pytest.mark.parametrize(
    "key, url, belongs",
    [
        ("storage.root", f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs", "AWS_SECRET_ACCESS_KEY"),
        ("dataset.root", f"gs://bucket/dfew?token={SECRET}", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("describe.base_url", f"https://user:{SECRET}@api.example.com/v1", "OPENAI_API_KEY"),
        ("describe.base_url", f"https://api.example.com/v1?api_key={SECRET}", "OPENAI_API_KEY"),
        ("tracking.mlflow_uri", f"https://admin:{SECRET}@mlflow.example.com", "MLFLOW_TRACKING_PASSWORD"),
        ("tracking.mlflow_uri", f"postgresql://mlflow:{SECRET}@db/mlflow", "PGPASSWORD"),
        ("tracking.artifact_location", f"s3://AKIAEXAMPLE:{SECRET}@bucket/art", "AWS_ACCESS_KEY_ID"),
    ],
)
def test_config_refuses_credentials_naming_the_key_and_where_they_go(key, url, belongs, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={url}"])
    (problem,) = err.value.problems
    assert problem.startswith(f"{key}: ") and "carries credentials" in problem
    assert belongs in problem
    assert SECRET not in str(err.value)
    # The same from a file: the message names it, and still does not echo the secret.
    section, field = key.split(".")
    path = tmp_path / "exp.yaml"
    path.write_text(f"{section}:\n  {field}: '{url}'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and SECRET not in str(err.value)


def test_describe_base_url_must_be_http_or_https():
    with pytest.raises(ConfigError, match=r"describe.base_url: expected an http:// or https:// URL"):
        load_config(None, ["describe.base_url=api.openai.com/v1"])
    cfg = load_config(None, ["describe.base_url=https://api.openai.com/v1", "describe.allow_insecure_http=false"])
    assert cfg.describe.allow_insecure_http is False


def test_credentials_from_the_environment_are_fine():
    # The default base_url and a credential-free storage URI load as before.
    cfg = load_config(None, ["storage.root=s3://bucket/runs?region=eu-west-1"])
    assert cfg.storage.root == "s3://bucket/runs?region=eu-west-1"
