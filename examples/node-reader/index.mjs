// Example function: reads one secret through the scoped-secrets local API, exactly as AWS's
// Parameters and Secrets Lambda Extension documents it (GET on localhost with the
// X-Aws-Parameters-Secrets-Token header), and returns a SHA-256 digest of it. The value itself
// is never returned or logged. Built-in fetch and node:crypto only; no dependencies.
//
// Event: {"secretId": "app/db"} (optional "versionStage"); without it, SECRET_ID from the
// environment. Port: SCOPED_SECRETS_PORT, else PARAMETERS_SECRETS_EXTENSION_HTTP_PORT, else 2773.
import { createHash } from "node:crypto";

export const handler = async (event) => {
  const secretId = event?.secretId ?? process.env.SECRET_ID;
  if (!secretId) {
    throw new Error("no secretId in the event and no SECRET_ID in the environment");
  }
  const port =
    process.env.SCOPED_SECRETS_PORT ||
    process.env.PARAMETERS_SECRETS_EXTENSION_HTTP_PORT ||
    "2773";
  const query = new URLSearchParams({ secretId });
  if (event?.versionStage) query.set("versionStage", event.versionStage);
  // 127.0.0.1, not localhost: the extension listens on IPv4 loopback only, and Node may
  // resolve localhost to ::1 first.
  const response = await fetch(`http://127.0.0.1:${port}/secretsmanager/get?${query}`, {
    // SnapStart functions have no AWS_SESSION_TOKEN; the container token stands in.
    headers: {
      "X-Aws-Parameters-Secrets-Token":
        process.env.AWS_SESSION_TOKEN ?? process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN ?? "",
    },
    signal: AbortSignal.timeout(10_000),
  });
  const answer = await response.json().catch(() => ({}));
  if (response.status !== 200) {
    // Error bodies carry a code and a message, never a value.
    return { secretId, status: response.status, error: answer.error ?? null };
  }
  const value = answer.SecretString;
  return {
    secretId,
    status: 200,
    versionId: answer.VersionId ?? null,
    sha256: value === undefined ? null : createHash("sha256").update(value).digest("hex"),
  };
};
