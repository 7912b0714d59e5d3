"""Security on by default: the EMR security configuration (IMDSv2, encryption) and the SSE of every
object the DAG writes, against the moto server over HTTP (no DAG run)."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from airflow_testing import BUCKET, REGION
from llm_decoder_airflow import emr, security, wheelhouse
from llm_decoder_airflow.files import FileStore
from llm_decoder_airflow.params import emr_params
from llm_decoder_airflow.settings import EmrSettings, load_emr_config, split_config
from llm_decoder_airflow.staging import stage_code
from llm_decoder_airflow.tasks import stage_emr_run

from spark_jobs.common.errors import ConfigError, InputError

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def unique_settings(**keys) -> EmrSettings:
    """Settings whose security configuration no other test has created (its name hashes the key)."""
    disk_key = f"arn:aws:kms:{REGION}:123456789012:key/{uuid.uuid4()}"
    return EmrSettings(bucket=BUCKET, region=REGION, local_disk_kms_key_arn=disk_key, **keys)


def exists(emr_client, name: str) -> bool:
    # moto 5.2.5 has no ListSecurityConfigurations: ask by name.
    try:
        emr_client.describe_security_configuration(Name=name)
    except emr_client.exceptions.InvalidRequestException:
        return False
    return True


def test_the_default_requires_imdsv2_and_encrypts_s3_at_rest():
    document = security.security_configuration(EmrSettings())
    assert document["InstanceMetadataServiceConfiguration"] == {
        "MinimumInstanceMetadataServiceVersion": 2,
        "HttpPutResponseHopLimit": 1,
    }
    encryption = document["EncryptionConfiguration"]
    assert encryption["EnableAtRestEncryption"] is True and encryption["EnableInTransitEncryption"] is False
    assert encryption["AtRestEncryptionConfiguration"] == {
        "S3EncryptionConfiguration": {"EncryptionMode": "SSE-S3"}
    }

    certs = "s3://certs-bucket/emr/certs.zip"
    full = EmrSettings(s3_kms_key_arn=KEY, local_disk_kms_key_arn=KEY, in_transit_certificates=certs)
    encryption = security.security_configuration(full)["EncryptionConfiguration"]
    at_rest = encryption["AtRestEncryptionConfiguration"]
    assert at_rest["S3EncryptionConfiguration"] == {"EncryptionMode": "SSE-KMS", "AwsKmsKey": KEY}
    assert at_rest["LocalDiskEncryptionConfiguration"] == {
        "EncryptionKeyProviderType": "AwsKms",
        "AwsKmsKey": KEY,
        "EnableEbsEncryption": True,
    }
    assert encryption["EnableInTransitEncryption"] is True
    assert encryption["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"] == {
        "CertificateProviderType": "PEM",
        "S3Object": certs,
    }
    # The name follows the content: same settings, same name; another key, another configuration.
    assert security.configuration_name(EmrSettings()) == security.configuration_name(EmrSettings(prefix="x"))
    assert security.configuration_name(full) != security.configuration_name(EmrSettings())
    assert security.configuration_name(full).startswith("llm-decoder-")


def test_the_cluster_request_names_it():
    settings = EmrSettings()
    spec = emr.cluster_spec(settings, "r1", "s3://b/p/runs/r1/code")
    assert spec["SecurityConfiguration"] == security.configuration_name(settings)
    named = emr.cluster_spec(EmrSettings(security_configuration="team-imdsv2"), "r1", "s3://x")
    assert named["SecurityConfiguration"] == "team-imdsv2"


def test_created_once_then_reused(moto_endpoint, emr_client, caplog):
    settings = unique_settings()
    name = security.configuration_name(settings)
    assert not exists(emr_client, name)
    with caplog.at_level(logging.INFO, logger="llm_decoder_airflow.security"):
        assert security.ensure_security_configuration(settings, "aws_default") == name
        created = emr_client.describe_security_configuration(Name=name)
        assert security.ensure_security_configuration(settings, "aws_default") == name  # a retry, a rerun
    assert json.loads(created["SecurityConfiguration"]) == security.security_configuration(settings)
    again = emr_client.describe_security_configuration(Name=name)  # the first one, not a new one
    assert again["CreationDateTime"] == created["CreationDateTime"]
    assert f"created security configuration {name}" in caplog.text
    assert f"security configuration {name} exists: reused" in caplog.text


def test_created_meanwhile_by_another_run_is_reused(moto_endpoint, emr_client, monkeypatch, caplog):
    settings = unique_settings()
    name = security.configuration_name(settings)
    plain_describe = security._describe
    seen: list[str] = []

    def describe_as_the_other_run_creates_it(client, wanted):
        if not seen:  # the first look finds nothing; the other run creates it right after
            seen.append(wanted)
            emr_client.create_security_configuration(
                Name=wanted, SecurityConfiguration=json.dumps(security.security_configuration(settings))
            )
            return None
        return plain_describe(client, wanted)

    monkeypatch.setattr(security, "_describe", describe_as_the_other_run_creates_it)
    with caplog.at_level(logging.INFO, logger="llm_decoder_airflow.security"):
        assert security.ensure_security_configuration(settings, "aws_default") == name
    assert exists(emr_client, name) and "was created meanwhile" in caplog.text


def test_a_named_configuration_is_used_as_it_is_and_must_exist(moto_endpoint, emr_client):
    own = f"team-{uuid.uuid4().hex[:8]}"
    # unique key settings: the configuration the DAG would make for them exists in no other test
    settings = unique_settings(security_configuration=own)
    with pytest.raises(ConfigError) as info:
        security.ensure_security_configuration(settings, "aws_default")
    assert str(info.value).startswith(f"EMR security configuration '{own}' does not exist in {REGION} (")
    assert "emr.security_configuration" in str(info.value) and "\n" not in str(info.value)

    emr_client.create_security_configuration(Name=own, SecurityConfiguration="{}")
    assert security.ensure_security_configuration(settings, "aws_default") == own
    # nothing created beside it: not the configuration the DAG makes when none is named
    assert not exists(
        emr_client, security.configuration_name(settings.model_copy(update={"security_configuration": None}))
    )
    assert security.planned_request(settings) is None


def test_missing_certificates_and_bad_keys_are_one_line_errors(moto_endpoint, s3):
    certs = f"s3://{BUCKET}/certs/{uuid.uuid4().hex}.zip"
    with pytest.raises(InputError) as info:
        security.ensure_security_configuration(unique_settings(in_transit_certificates=certs), "aws_default")
    assert str(info.value).startswith(f"in-transit certificates not found: {certs} (")
    for key, value in [
        ("s3_kms_key_arn", "alias/my-key"),
        ("local_disk_kms_key_arn", "1234abcd"),
        ("in_transit_certificates", "s3://b/certs.tar"),
    ]:
        with pytest.raises(ConfigError) as info:
            split_config({"emr": {key: value}}, "emr.yaml")
        assert str(info.value).startswith(f"emr.yaml: emr.{key}: ") and "\n" not in str(info.value)


def sse_of(s3, key: str) -> dict:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    return {k: head[k] for k in ("ServerSideEncryption", "SSEKMSKeyId") if k in head}


def test_staging_creates_the_configuration_and_writes_every_object_sse_s3(moto_endpoint, s3, emr_client):
    pipeline_raw, settings = load_emr_config()  # the tests' configs/emr.yaml: no KMS key
    params = {name: param.value for name, param in emr_params(pipeline_raw, settings.emr).items()}
    plan = stage_emr_run(pipeline_raw, settings, params, "manual__sse-default")
    name = plan["job_flow"]["SecurityConfiguration"]
    assert name == security.configuration_name(settings.emr)
    described = emr_client.describe_security_configuration(Name=name)["SecurityConfiguration"]
    assert (
        json.loads(described)["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"]
        == 2
    )
    code = plan["code"].split(f"s3://{BUCKET}/", 1)[1]
    staged = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=code + "/")["Contents"]]
    assert len(staged) >= 7  # archive, config, requirements, bootstrap script, entry scripts
    for key in staged:
        assert sse_of(s3, key) == {"ServerSideEncryption": "AES256"}, key


@pytest.mark.parametrize("kms_key", [None, KEY], ids=["sse-s3", "sse-kms"])
def test_every_write_path_carries_the_configured_sse(moto_endpoint, s3, kms_key):
    expected = (
        {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KEY}
        if kms_key
        else {"ServerSideEncryption": "AES256"}
    )
    files = FileStore("aws_default", REGION, kms_key)
    root = f"sse-writes/{kms_key is not None}"
    # the nodes' wheelhouse as an earlier staging left it (through FileStore: encrypted too)
    files.write_text(wheelhouse.manifest_uri(f"s3://{BUCKET}/{root}/code"), "{}")
    stage_code(files, f"s3://{BUCKET}/{root}/code", "run: {}\n")  # staging (S3Hook.load_bytes)
    files.write_text(f"s3://{BUCKET}/{root}/summary.json", "{}")  # collect
    assert files.write_if_version(f"s3://{BUCKET}/{root}/champion.json", "{}", None)  # promote
    written = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=root + "/")["Contents"]]
    assert len(written) >= 9
    for key in written:
        assert sse_of(s3, key) == expected, key


def test_emr_plan_shows_the_configuration_and_its_name():
    from llm_decoder_airflow.plan import plan

    requests = plan([])
    created = requests["security_configuration"]
    assert created["Name"] == requests["run_job_flow"]["SecurityConfiguration"]
    imds = created["SecurityConfiguration"]["InstanceMetadataServiceConfiguration"]
    assert imds["MinimumInstanceMetadataServiceVersion"] == 2
    named = plan(["emr.security_configuration=team-imdsv2"])
    assert named["security_configuration"] is None
    assert named["run_job_flow"]["SecurityConfiguration"] == "team-imdsv2"
