"""The EMR security configuration every cluster of the DAG runs under.

By default `stage` creates it once and every later run reuses it (`ensure_security_configuration`):

- IMDSv2 required on every node: a request to the instance metadata service (the instance
  profile's credentials) must first PUT for a session token, which an SSRF or a misconfigured
  proxy cannot do. EMR's own components use IMDSv2 since 5.32/6.2.
- At rest, S3: EMRFS writes (the steps' Spark output, the cluster's logs) are SSE-S3, or
  SSE-KMS with `emr.s3_kms_key_arn`. The DAG's own writes follow the same key (files.FileStore).
- At rest, local disks: with `emr.local_disk_kms_key_arn`, EMR encrypts the nodes' instance
  store and EBS volumes (the root volume included: EnableEbsEncryption). Without a key, EMR
  encrypts nothing on the nodes' disks (shuffle files, spilled blocks, checkpoints being
  written); only the account's EBS encryption by default, if turned on, would.
- In transit: with `emr.in_transit_certificates` (a zip of privateKey.pem, certificateChain.pem
  and optionally trustedCertificates.pem in S3), TLS between the nodes (Spark RPC, shuffle,
  block transfer, the web UIs, HDFS). Without it, traffic inside the VPC is not encrypted.

A security configuration cannot be changed once created, so its name carries a hash of its
content: a changed setting gives a new name (created on the next run), never a stale reuse.
`emr.security_configuration` names an existing one instead, used as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from llm_decoder_airflow.files import split_s3
from llm_decoder_airflow.settings import EmrSettings
from spark_jobs.common.errors import ConfigError, InputError

log = logging.getLogger(__name__)

NAME_PREFIX = "llm-decoder-"
# YARN containers are processes on the node itself: the token needs one hop (Docker would need 2).
IMDS_HOP_LIMIT = 1


def security_configuration(emr: EmrSettings) -> dict[str, Any]:
    """The security configuration the DAG creates for these settings (CreateSecurityConfiguration's
    JSON, as a dict)."""
    if emr.s3_kms_key_arn:
        s3 = {"EncryptionMode": "SSE-KMS", "AwsKmsKey": emr.s3_kms_key_arn}
    else:
        s3 = {"EncryptionMode": "SSE-S3"}
    at_rest: dict[str, Any] = {"S3EncryptionConfiguration": s3}
    if emr.local_disk_kms_key_arn:
        at_rest["LocalDiskEncryptionConfiguration"] = {
            "EncryptionKeyProviderType": "AwsKms",
            "AwsKmsKey": emr.local_disk_kms_key_arn,
            "EnableEbsEncryption": True,
        }
    encryption: dict[str, Any] = {
        "EnableAtRestEncryption": True,
        "EnableInTransitEncryption": bool(emr.in_transit_certificates),
        "AtRestEncryptionConfiguration": at_rest,
    }
    if emr.in_transit_certificates:
        encryption["InTransitEncryptionConfiguration"] = {
            "TLSCertificateConfiguration": {
                "CertificateProviderType": "PEM",
                "S3Object": emr.in_transit_certificates,
            }
        }
    return {
        "EncryptionConfiguration": encryption,
        "InstanceMetadataServiceConfiguration": {
            "MinimumInstanceMetadataServiceVersion": 2,
            "HttpPutResponseHopLimit": IMDS_HOP_LIMIT,
        },
    }


def _document(emr: EmrSettings) -> str:
    return json.dumps(security_configuration(emr), sort_keys=True, separators=(",", ":"))


def configuration_name(emr: EmrSettings) -> str:
    """The name the cluster request carries: emr.security_configuration, else the DAG's own."""
    if emr.security_configuration:
        return emr.security_configuration
    return NAME_PREFIX + hashlib.sha256(_document(emr).encode()).hexdigest()[:12]


def planned_request(emr: EmrSettings) -> dict[str, Any] | None:
    """The CreateSecurityConfiguration request `stage` sends if the configuration is absent (its
    JSON as an object, for reading); None when emr.security_configuration names one."""
    if emr.security_configuration:
        return None
    return {"Name": configuration_name(emr), "SecurityConfiguration": security_configuration(emr)}


def _describe(client: Any, name: str) -> str | None:
    """The configuration's JSON, or None when EMR says there is none by that name."""
    try:
        return client.describe_security_configuration(Name=name)["SecurityConfiguration"]
    except ClientError as error:
        # EMR answers InvalidRequestException ("... does not exist") for a missing name.
        if error.response.get("Error", {}).get("Code") == "InvalidRequestException":
            return None
        raise


def _check_certificates(emr: EmrSettings, aws_conn_id: str | None) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = split_s3(emr.in_transit_certificates)
    if not S3Hook(aws_conn_id=aws_conn_id, region_name=emr.region).check_for_key(key, bucket_name=bucket):
        raise InputError(
            f"in-transit certificates not found: {emr.in_transit_certificates} "
            "(configs/emr.yaml emr.in_transit_certificates: a zip of PEM files)"
        )


def ensure_security_configuration(emr: EmrSettings, aws_conn_id: str | None) -> str:
    """Make sure the run's security configuration exists in emr.region; return its name.

    The DAG's own is created when absent and reused otherwise (a retry, a later run); when two
    runs create it at once, the one that loses finds it afterwards and uses it. A configuration
    named in emr.security_configuration must already exist."""
    from airflow.providers.amazon.aws.hooks.emr import EmrHook

    client = EmrHook(aws_conn_id=aws_conn_id, region_name=emr.region).conn
    name = configuration_name(emr)
    if emr.security_configuration:
        if _describe(client, name) is None:
            raise ConfigError(
                f"EMR security configuration '{name}' does not exist in {emr.region} "
                "(configs/emr.yaml emr.security_configuration; null lets the DAG create one)"
            )
        log.info("security configuration %s (emr.security_configuration, used as it is)", name)
        return name
    if emr.in_transit_certificates:
        _check_certificates(emr, aws_conn_id)
    if _describe(client, name) is not None:
        log.info("security configuration %s exists: reused", name)
        return name
    try:
        client.create_security_configuration(Name=name, SecurityConfiguration=_document(emr))
    except ClientError as error:
        if _describe(client, name) is None:
            raise  # a real refusal (a bad key ARN, no permission), not a concurrent creation
        log.info("security configuration %s was created meanwhile (%s): reused", name, error)
        return name
    log.info(
        "created security configuration %s: IMDSv2 required; S3 %s; local disks %s; in transit %s",
        name,
        "SSE-KMS" if emr.s3_kms_key_arn else "SSE-S3",
        "KMS-encrypted" if emr.local_disk_kms_key_arn else "not encrypted by EMR",
        "TLS" if emr.in_transit_certificates else "not encrypted",
    )
    return name
