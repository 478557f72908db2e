// kubelambda's Lambda runtime client for Node.js (no dependencies).
//
// Started by the agent as `node $LAMBDA_RUNTIME_DIR/index.mjs`. It loads $_HANDLER
// (`path/file.export`, split at the first dot of the file name) from $LAMBDA_TASK_ROOT — CommonJS
// or ES module — and serves invocations from the Runtime API at $AWS_LAMBDA_RUNTIME_API.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import util from "node:util";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const API = "/2018-06-01/runtime";
const [apiHost, apiPort] = splitHostPort(process.env.AWS_LAMBDA_RUNTIME_API || "127.0.0.1:9001");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function splitHostPort(s) {
  const i = s.lastIndexOf(":");
  return [s.slice(0, i), Number(s.slice(i + 1))];
}

// --- Runtime API client ----------------------------------------------------------------------------

function call(method, urlPath, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: apiHost, port: apiPort, method, path: API + urlPath, agent, headers },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

async function nextInvocation() {
  const res = await call("GET", "/invocation/next");
  if (res.status !== 200) {
    throw new Error(`Runtime API next answered ${res.status}: ${res.body.toString().slice(0, 200)}`);
  }
  return res;
}

async function postResponse(id, payload) {
  const body = Buffer.from(payload, "utf8");
  const res = await call("POST", `/invocation/${encodeURIComponent(id)}/response`, body, {
    "Content-Type": "application/json",
    "Content-Length": body.length,
  });
  if (res.status !== 202) {
    rawLog(`Runtime API refused the response for ${id}: ${res.status} ${res.body.toString()}`);
  }
}

async function postError(id, err) {
  const error = toLambdaError(err);
  const body = Buffer.from(JSON.stringify(error), "utf8");
  const where = id === null ? "/init/error" : `/invocation/${encodeURIComponent(id)}/error`;
  await call("POST", where, body, {
    "Content-Type": "application/vnd.aws.lambda.error+json",
    "Content-Length": body.length,
    "Lambda-Runtime-Function-Error-Type": error.errorType,
  });
}

// --- errors ------------------------------------------------------------------------------------------

class RuntimeError extends Error {
  constructor(type, message, cause) {
    super(message);
    this.name = type;
    if (cause && cause.stack) this.stack = `${type}: ${message}\n${String(cause.stack).split("\n").slice(1).join("\n")}`;
  }
}

// Lambda's Node.js error body: {errorType, errorMessage, trace}.
function toLambdaError(err) {
  if (err instanceof Error) {
    return {
      errorType: err.name || "Error",
      errorMessage: err.message ?? "",
      trace: typeof err.stack === "string" ? err.stack.split("\n") : [],
    };
  }
  let message;
  try {
    message = typeof err === "string" ? err : JSON.stringify(err);
  } catch {
    message = String(err);
  }
  return { errorType: typeof err, errorMessage: message ?? String(err), trace: [] };
}

// --- logging -----------------------------------------------------------------------------------------

let currentRequestId = undefined;

function rawLog(line) {
  process.stdout.write(line + "\n");
}

// Lambda's LoggingConfig (docs/logs.md): with AWS_LAMBDA_LOG_FORMAT=JSON every console line is one JSON object
// (timestamp, level, requestId, message), and lines under AWS_LAMBDA_LOG_LEVEL are not written.
const LEVEL_ORDER = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

function patchConsole() {
  const levels = { log: "INFO", info: "INFO", warn: "WARN", error: "ERROR", debug: "DEBUG", trace: "TRACE" };
  const json = (process.env.AWS_LAMBDA_LOG_FORMAT || "").toUpperCase() === "JSON";
  const min = json ? Math.max(0, LEVEL_ORDER.indexOf((process.env.AWS_LAMBDA_LOG_LEVEL || "INFO").toUpperCase())) : 0;
  for (const [fn, level] of Object.entries(levels)) {
    if (LEVEL_ORDER.indexOf(level) < min) {
      console[fn] = () => {};
      continue;
    }
    console[fn] = (...args) => {
      let msg = util.format(...args);
      if (fn === "trace") msg += "\n" + new Error().stack.split("\n").slice(2).join("\n");
      if (json) {
        const line = { timestamp: new Date().toISOString(), level, requestId: currentRequestId, message: msg };
        process.stdout.write(JSON.stringify(line) + "\n");
        return;
      }
      process.stdout.write(`${new Date().toISOString()}\t${currentRequestId ?? "undefined"}\t${level}\t${msg}\n`);
    };
  }
}

// --- handler loading ---------------------------------------------------------------------------------

const EXTENSIONS = [".js", ".mjs", ".cjs"];

function isEsm(file) {
  if (file.endsWith(".mjs")) return true;
  if (file.endsWith(".cjs")) return false;
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, "package.json");
    if (fs.existsSync(pkg)) {
      try {
        return JSON.parse(fs.readFileSync(pkg, "utf8")).type === "module";
      } catch {
        return false;
      }
    }
    if (dir === path.dirname(dir)) return false;
  }
}

async function loadModule(taskRoot, modulePath) {
  const base = path.resolve(taskRoot, modulePath);
  const file = EXTENSIONS.map((ext) => base + ext).find((f) => fs.existsSync(f));
  const require = createRequire(path.join(taskRoot, "index.js"));
  try {
    if (!file) return require(modulePath); // a package under node_modules
    if (isEsm(file)) return await import(pathToFileURL(file).href);
    return require(file);
  } catch (e) {
    if (e instanceof SyntaxError) throw new RuntimeError("Runtime.UserCodeSyntaxError", `${e.name}: ${e.message}`, e);
    if (e && e.code === "MODULE_NOT_FOUND" && !file) {
      throw new RuntimeError("Runtime.ImportModuleError", `Error: Cannot find module '${modulePath}'`, e);
    }
    if (e && (e.code === "ERR_MODULE_NOT_FOUND" || e.code === "MODULE_NOT_FOUND")) {
      throw new RuntimeError("Runtime.ImportModuleError", `${e.name}: ${e.message}`, e);
    }
    throw e;
  }
}

async function loadHandler(taskRoot, handlerString) {
  const slash = handlerString.lastIndexOf("/");
  const dir = handlerString.slice(0, slash + 1);
  const rest = handlerString.slice(slash + 1);
  const dot = rest.indexOf(".");
  if (dot <= 0 || dot === rest.length - 1 || handlerString.includes("..")) {
    throw new RuntimeError("Runtime.MalformedHandlerName", "Bad handler");
  }
  const modulePath = dir + rest.slice(0, dot);
  const exportPath = rest.slice(dot + 1);
  const mod = await loadModule(taskRoot, modulePath);
  let fn = exportPath.split(".").reduce((obj, key) => (obj == null ? undefined : obj[key]), mod);
  if (fn === undefined && mod && mod.default) {
    fn = exportPath.split(".").reduce((obj, key) => (obj == null ? undefined : obj[key]), mod.default);
  }
  if (fn === undefined) {
    throw new RuntimeError("Runtime.HandlerNotFound", `${rest} is undefined or not exported`);
  }
  if (typeof fn !== "function") {
    throw new RuntimeError("Runtime.HandlerNotFound", `${rest} is not a function`);
  }
  return fn;
}

// --- context -----------------------------------------------------------------------------------------

function makeContext(headers, finish) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"]);
  const env = process.env;
  const ctx = {
    callbackWaitsForEmptyEventLoop: true,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: headers["lambda-runtime-aws-request-id"],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    getRemainingTimeInMillis: () => Math.max(deadline - Date.now(), 0),
    // Legacy completion methods, still honoured by Lambda's Node.js runtimes.
    done: (err, result) => finish(err, result),
    succeed: (result) => finish(null, result),
    fail: (err) => finish(err ?? "handled"),
  };
  const cc = headers["lambda-runtime-client-context"];
  if (cc) ctx.clientContext = JSON.parse(cc);
  const cognito = headers["lambda-runtime-cognito-identity"];
  if (cognito) {
    const id = JSON.parse(cognito);
    ctx.identity = { cognitoIdentityId: id.cognitoIdentityId, cognitoIdentityPoolId: id.cognitoIdentityPoolId };
  }
  return ctx;
}

function emptyEventLoop() {
  // 'beforeExit' fires once nothing but our idle, unref'ed keep-alive socket is left.
  return new Promise((resolve) => process.once("beforeExit", resolve));
}

// Runs one invocation and settles with [error, result, shouldWaitForEmptyLoop()]. Only callback-style
// handlers wait for the event loop to empty, and only while callbackWaitsForEmptyEventLoop is true.
function runHandler(handler, event, headers) {
  return new Promise((resolve) => {
    let settled = false;
    let callbackStyle = handler.length >= 3;
    let ctx;
    const finish = (err, result) => {
      if (settled) return;
      settled = true;
      // Read when the loop asks, after the handler returned: a callback may come synchronously.
      resolve([err ?? null, result, () => callbackStyle && ctx.callbackWaitsForEmptyEventLoop]);
    };
    ctx = makeContext(headers, finish);
    try {
      const out = handler(event, ctx, finish);
      if (out && typeof out.then === "function") {
        callbackStyle = false;
        out.then(
          (r) => finish(null, r),
          (e) => finish(e ?? new Error("handler rejected with " + String(e))),
        );
      } else if (!callbackStyle) {
        finish(null, out);
      } // else the answer comes through the callback
    } catch (e) {
      finish(e);
    }
  });
}

// --- the loop ----------------------------------------------------------------------------------------

async function serve(handler) {
  for (;;) {
    const next = await nextInvocation();
    const id = next.headers["lambda-runtime-aws-request-id"];
    currentRequestId = id;
    const trace = next.headers["lambda-runtime-trace-id"];
    if (trace) process.env._X_AMZN_TRACE_ID = trace;
    else delete process.env._X_AMZN_TRACE_ID;
    let event;
    try {
      event = JSON.parse(next.body.toString("utf8"));
    } catch (e) {
      await postError(id, new RuntimeError("Runtime.UnmarshalError", `Unable to unmarshal input: ${e.message}`));
      continue;
    }
    const [err, result, wait] = await runHandler(handler, event, next.headers);
    if (wait()) await emptyEventLoop();
    if (err !== null) {
      const e = toLambdaError(err);
      console.error("Invoke Error \t" + JSON.stringify(e));
      await postError(id, err);
      continue;
    }
    let payload;
    try {
      payload = JSON.stringify(result === undefined ? null : result);
    } catch (e) {
      await postError(id, new RuntimeError("Runtime.MarshalError", `Unable to stringify response body: ${e.message}`));
      continue;
    }
    await postResponse(id, payload);
  }
}

function crashHandler(kind) {
  return async (err) => {
    const e = kind === "Runtime.UnhandledPromiseRejection" && !(err instanceof Error)
      ? new RuntimeError(kind, String(err)) : err;
    console.error(`${kind === "uncaughtException" ? "Uncaught Exception" : "Unhandled Promise Rejection"} \t` +
      JSON.stringify(toLambdaError(e)));
    try {
      if (currentRequestId !== undefined) await postError(currentRequestId, e);
    } finally {
      process.exit(129);
    }
  };
}

// A warm-pool pod's runtime starts before it has a function (docs/warm-pools.md): the agent sets
// KUBELAMBDA_AWAIT_SPECIALIZATION=1, and this call blocks until the pod is given a function, then the
// function's environment is adopted. Node's start and this module's imports are then off the cold path.
function awaitFunction() {
  return new Promise((resolve, reject) => {
    const path = "/2018-06-01/kubelambda/specialization";
    const req = http.request({ host: apiHost, port: apiPort, method: "GET", path, agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        try {
          const answer = JSON.parse(Buffer.concat(chunks).toString());
          for (const key of answer.unset || []) delete process.env[key];
          Object.assign(process.env, answer.env || {});
          resolve();
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on("error", reject);
    req.end();
  });
}

async function main() {
  if (process.env.KUBELAMBDA_AWAIT_SPECIALIZATION === "1") await awaitFunction();
  patchConsole();
  process.on("uncaughtException", crashHandler("uncaughtException"));
  process.on("unhandledRejection", crashHandler("Runtime.UnhandledPromiseRejection"));
  let handler;
  try {
    handler = await loadHandler(process.env.LAMBDA_TASK_ROOT || "/var/task", process.env._HANDLER || "");
  } catch (e) {
    console.error("Init Error \t" + JSON.stringify(toLambdaError(e)));
    await postError(null, e);
    process.exit(129);
  }
  await serve(handler);
}

main();
