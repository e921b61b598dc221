"""Example function: reads one secret through the scoped-secrets local API, exactly as AWS's
Parameters and Secrets Lambda Extension documents it (GET on localhost with the
X-Aws-Parameters-Secrets-Token header), and returns a SHA-256 digest of it. The value itself is
never returned or logged. Standard library only.

Event: {"secretId": "app/db"} (optional "versionStage"); without it, SECRET_ID from the
environment. Port: SCOPED_SECRETS_PORT, else PARAMETERS_SECRETS_EXTENSION_HTTP_PORT, else 2773.
"""

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request


def handler(event, context):
    secret_id = (event or {}).get("secretId") or os.environ.get("SECRET_ID")
    if not secret_id:
        raise ValueError("no secretId in the event and no SECRET_ID in the environment")
    port = (
        os.environ.get("SCOPED_SECRETS_PORT")
        or os.environ.get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT")
        or "2773"
    )
    query = {"secretId": secret_id}
    if (event or {}).get("versionStage"):
        query["versionStage"] = event["versionStage"]
    request = urllib.request.Request(
        f"http://localhost:{port}/secretsmanager/get?{urllib.parse.urlencode(query)}",
        # SnapStart functions have no AWS_SESSION_TOKEN; the container token stands in.
        headers={
            "X-Aws-Parameters-Secrets-Token": os.environ.get("AWS_SESSION_TOKEN")
            or os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        # Error bodies carry a code and a message, never a value.
        try:
            code = json.load(error).get("error")
        except ValueError:
            code = None
        return {"secretId": secret_id, "status": error.code, "error": code}
    value = answer.get("SecretString")
    return {
        "secretId": secret_id,
        "status": 200,
        "versionId": answer.get("VersionId"),
        "sha256": hashlib.sha256(value.encode()).hexdigest() if value is not None else None,
    }
