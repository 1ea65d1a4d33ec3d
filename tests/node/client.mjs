// Drives the engine through DurableControl from Node.js, with stubs loaded at run time from
// the repository's proto/ (the same files the Python stubs come from):
//   node client.mjs <host:port> <handler> <input string>
// Prints one JSON object: the Invoke response and the invocation's journal. With
// DURABLE_CA (a PEM file) it speaks TLS; with DURABLE_TOKEN it sends the token as
// "authorization: Bearer <token>" on every call.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "../../proto");
const [target, handler, name] = process.argv.slice(2);

const definition = protoLoader.loadSync("durable/v1/control.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const durable = grpc.loadPackageDefinition(definition).durable.v1;
function credentials() {
  const ca = process.env.DURABLE_CA;
  const token = process.env.DURABLE_TOKEN;
  if (!ca) return grpc.credentials.createInsecure();
  const channel = grpc.credentials.createSsl(fs.readFileSync(ca));
  if (!token) return channel;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(channel, bearer);
}
const client = new durable.DurableControl(target, credentials());

// google.rpc.Status and ErrorInfo, as the engine sends them in grpc-status-details-bin
// (Any spelled out: same fields, same wire format; protobufjs names its fields camelCase).
const rpc = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`).root;

function errorInfo(err) {
  const [raw] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (!raw) return null;
  const status = rpc.lookupType("google.rpc.Status").decode(raw);
  const detail = status.details.find((d) => d.typeUrl.endsWith("/google.rpc.ErrorInfo"));
  return detail ? rpc.lookupType("google.rpc.ErrorInfo").toObject(
    rpc.lookupType("google.rpc.ErrorInfo").decode(detail.value),
  ) : null;
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 20000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

try {
  const invoked = await call("Invoke", {
    handler,
    input: { json: { stringValue: name } },
    wait: true,
  });
  const view = await call("GetWorkflow", { invocation_id: invoked.invocation_id });
  console.log(
    JSON.stringify({
      invocation_id: invoked.invocation_id,
      status: invoked.status,
      result: invoked.result.value.json.stringValue,
      journal: view.journal.map((e) => ({ name: e.name, kind: e.kind, summary: e.summary })),
    }),
  );
  const bad = await call("GetWorkflow", { invocation_id: "bogus" }).catch((e) => e);
  const info = errorInfo(bad);
  console.error(JSON.stringify({ code: bad.code, details: bad.details, error_info: info }));
} finally {
  client.close();
}
