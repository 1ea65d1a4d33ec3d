// Drives the engine through DurableControl from Node.js, with stubs loaded at run time from
// the repository's proto/ (the same files the Python stubs come from):
//   node client.mjs <host:port> <handler> <input string>
// Prints one JSON object: the Invoke response and the invocation's journal.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

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
const client = new durable.DurableControl(target, grpc.credentials.createInsecure());

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
  console.error(JSON.stringify({ code: bad.code, details: bad.details }));
} finally {
  client.close();
}
