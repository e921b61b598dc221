"""Example function: ordinary boto3 code, unchanged. With the scoped-secrets layer attached and
AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:2773 and AWS_ENDPOINT_URL_SSM=http://127.0.0.1:2773
set, boto3's GetSecretValue, BatchGetSecretValue, GetParameter and GetParameters calls are
answered by the extension (SigV4-checked, allowlisted, per-invocation scoped) instead of by
Secrets Manager and Parameter Store with the execution role.

Events: {"op": "get", "secretId": "app/db"} (optional "versionId"),
{"op": "batch", "secretIds": [...]}, {"op": "put", "secretId": "app/db"} (refused: the local
endpoint serves reads only), {"op": "param", "name": "/app/config"} (optional "decrypt"; a
version or label goes in the name: "/app/config:2"), {"op": "params", "names": [...]}
(optional "decrypt"), {"op": "put-param", "name": "/app/config"} (refused). Answers carry
SHA-256 digests and SDK error codes, never a value.

{"op": "forge", "how": "wrong-key" | "tampered-body" | "stale"} is not something a function
does: it sends what a forger would (a request signed with a wrong secret key, a body changed
after signing, a signature dated 6 minutes ago), through boto3's own signer, so the test suite
can show the extension refuses each.
"""

import datetime
import hashlib
import os
from unittest import mock

import boto3
import botocore.auth
import botocore.compat
from botocore.config import Config
from botocore.exceptions import ClientError

# The standard clients: boto3 reads AWS_ENDPOINT_URL_SECRETS_MANAGER and AWS_ENDPOINT_URL_SSM
# like every other setting.
client = boto3.client("secretsmanager")
ssm = boto3.client("ssm")


def handler(event, context):
    event = event or {}
    op = event.get("op", "get")
    try:
        if op == "get":
            return described(get(client, event))
        if op == "batch":
            answer = client.batch_get_secret_value(SecretIdList=event.get("secretIds", []))
            return {
                "values": [
                    {"name": v.get("Name"), "sha256": digest(v.get("SecretString"))}
                    for v in answer.get("SecretValues", [])
                ],
                "errors": [
                    {"secretId": e.get("SecretId"), "errorCode": e.get("ErrorCode")}
                    for e in answer.get("Errors", [])
                ],
            }
        if op == "put":
            client.put_secret_value(SecretId=event["secretId"], SecretString="overwritten")
            return {"put": "accepted"}
        if op == "forge":
            return described(forge(event))
        if op == "param":
            answer = ssm.get_parameter(Name=event["name"], WithDecryption=bool(event.get("decrypt")))
            return parameter(answer["Parameter"])
        if op == "params":
            answer = ssm.get_parameters(Names=event.get("names", []), WithDecryption=bool(event.get("decrypt")))
            return {
                "parameters": [parameter(p) for p in answer.get("Parameters", [])],
                "invalid": answer.get("InvalidParameters", []),
            }
        if op == "put-param":
            ssm.put_parameter(Name=event["name"], Value="overwritten", Type="String", Overwrite=True)
            return {"put": "accepted"}
        return {"error": "UnknownOp", "message": op}
    except ClientError as error:
        return {"error": error.response["Error"].get("Code"), "message": error.response["Error"].get("Message")}


def get(some_client, event):
    arguments = {"SecretId": event["secretId"]}
    if event.get("versionId"):
        arguments["VersionId"] = event["versionId"]
    return some_client.get_secret_value(**arguments)


def described(answer):
    binary = answer.get("SecretBinary")
    return {
        "sha256": digest(answer.get("SecretString")),
        "binarySha256": hashlib.sha256(binary).hexdigest() if binary is not None else None,
        "versionId": answer.get("VersionId"),
        "name": answer.get("Name"),
    }


def forge(event):
    how = event["how"]
    # One attempt, so that each forged request is sent once and its refusal comes back as is.
    once = Config(retries={"total_max_attempts": 1})
    if how == "wrong-key":
        session = boto3.session.Session()
        frozen = session.get_credentials().get_frozen_credentials()
        forger = session.client(
            "secretsmanager",
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key="not-the-function-secret-key",
            aws_session_token=frozen.token,
            config=once,
        )
        return get(forger, event)
    forger = boto3.session.Session().client("secretsmanager", config=once)
    if how == "tampered-body":
        # After signing, ask for another secret with the same signature.
        def tamper(request, **_):
            request.body = b'{"SecretId": "app/api"}'
            request.headers["Content-Length"] = str(len(request.body))

        forger.meta.events.register("before-send.secrets-manager.GetSecretValue", tamper)
        return get(forger, event)
    if how == "stale":
        six_minutes_ago = botocore.compat.get_current_datetime() - datetime.timedelta(minutes=6)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=six_minutes_ago):
            return get(forger, event)
    raise ValueError(f"unknown forgery {how!r}")


def parameter(p):
    return {
        "name": p.get("Name"),
        "type": p.get("Type"),
        "version": p.get("Version"),
        "selector": p.get("Selector"),
        "sha256": digest(p.get("Value")),
    }


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None
