// Example function: ordinary AWS SDK for JavaScript v3 code, unchanged. With the scoped-secrets
// layer attached and AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:2773 and
// AWS_ENDPOINT_URL_SSM=http://127.0.0.1:2773 set, the SDK's GetSecretValue,
// BatchGetSecretValue, GetParameter and GetParameters calls are answered by the extension
// (SigV4-checked, allowlisted, per-invocation scoped) instead of by Secrets Manager and
// Parameter Store with the execution role.
//
// Events: {"op": "get", "secretId": "app/db"} (optional "versionId"),
// {"op": "batch", "secretIds": [...]}, {"op": "put", "secretId": "app/db"} (refused: the local
// endpoint serves reads only), {"op": "param", "name": "/app/config"} (optional "decrypt"; a
// version or label goes in the name: "/app/config:2"), {"op": "params", "names": [...]}
// (optional "decrypt"), {"op": "put-param", "name": "/app/config"} (refused). Answers carry
// SHA-256 digests and SDK error codes, never a value.
//
// {"op": "forge", "how": "wrong-key" | "tampered-body" | "stale"} is not something a function
// does: it sends what a forger would (a request signed with a wrong secret key, a body changed
// after signing, a signature dated 6 minutes ago), through the SDK's own signer, so the test
// suite can show the extension refuses each.
const { createHash } = require("node:crypto");
const {
  SecretsManagerClient,
  GetSecretValueCommand,
  BatchGetSecretValueCommand,
  PutSecretValueCommand,
} = require("@aws-sdk/client-secrets-manager");
const { SSMClient, GetParameterCommand, GetParametersCommand, PutParameterCommand } = require("@aws-sdk/client-ssm");

// The standard clients: the SDK reads AWS_ENDPOINT_URL_SECRETS_MANAGER and AWS_ENDPOINT_URL_SSM
// like every other setting.
const client = new SecretsManagerClient({});
const ssm = new SSMClient({});

exports.handler = async (event = {}) => {
  const op = event.op ?? "get";
  try {
    switch (op) {
      case "get":
        return described(await client.send(get(event)));
      case "batch": {
        const answer = await client.send(new BatchGetSecretValueCommand({ SecretIdList: event.secretIds ?? [] }));
        return {
          values: (answer.SecretValues ?? []).map((v) => ({ name: v.Name, sha256: digest(v.SecretString) })),
          errors: (answer.Errors ?? []).map((e) => ({ secretId: e.SecretId, errorCode: e.ErrorCode })),
        };
      }
      case "put":
        await client.send(new PutSecretValueCommand({ SecretId: event.secretId, SecretString: "overwritten" }));
        return { put: "accepted" };
      case "forge":
        return described(await forge(event));
      case "param": {
        const answer = await ssm.send(new GetParameterCommand({ Name: event.name, WithDecryption: !!event.decrypt }));
        return parameter(answer.Parameter);
      }
      case "params": {
        const answer = await ssm.send(
          new GetParametersCommand({ Names: event.names ?? [], WithDecryption: !!event.decrypt }),
        );
        return { parameters: (answer.Parameters ?? []).map(parameter), invalid: answer.InvalidParameters ?? [] };
      }
      case "put-param":
        await ssm.send(new PutParameterCommand({ Name: event.name, Value: "overwritten", Type: "String", Overwrite: true }));
        return { put: "accepted" };
      default:
        return { error: "UnknownOp", message: op };
    }
  } catch (error) {
    if (error.$metadata === undefined) throw error; // not an answer from the service
    return { error: error.name, message: error.message };
  }
};

function get(event) {
  return new GetSecretValueCommand({ SecretId: event.secretId, VersionId: event.versionId });
}

function described(answer) {
  return {
    sha256: digest(answer.SecretString),
    binarySha256: answer.SecretBinary === undefined ? null : createHash("sha256").update(answer.SecretBinary).digest("hex"),
    versionId: answer.VersionId ?? null,
    name: answer.Name ?? null,
  };
}

async function forge(event) {
  // One attempt: the SDK would otherwise correct its clock from the answer's Date header and
  // retry the stale request, signed afresh.
  const options = { maxAttempts: 1 };
  switch (event.how) {
    case "wrong-key": {
      const credentials = {
        accessKeyId: process.env.AWS_ACCESS_KEY_ID,
        secretAccessKey: "not-the-function-secret-key",
        sessionToken: process.env.AWS_SESSION_TOKEN,
      };
      return new SecretsManagerClient({ ...options, credentials }).send(get(event));
    }
    case "tampered-body": {
      const forger = new SecretsManagerClient(options);
      // After signing, ask for another secret with the same signature.
      forger.middlewareStack.addRelativeTo(
        (next) => async (args) => {
          args.request.body = JSON.stringify({ SecretId: "app/api" });
          args.request.headers["content-length"] = String(Buffer.byteLength(args.request.body));
          return next(args);
        },
        { name: "tamperAfterSigning", relation: "after", toMiddleware: "httpSigningMiddleware" },
      );
      return forger.send(get(event));
    }
    case "stale":
      return new SecretsManagerClient({ ...options, systemClockOffset: -6 * 60 * 1000 }).send(get(event));
    default:
      throw new Error(`unknown forgery ${event.how}`);
  }
}

function parameter(p) {
  return {
    name: p.Name ?? null,
    type: p.Type ?? null,
    version: p.Version ?? null,
    selector: p.Selector ?? null,
    sha256: digest(p.Value),
  };
}

function digest(text) {
  return text === undefined ? null : createHash("sha256").update(text).digest("hex");
}
