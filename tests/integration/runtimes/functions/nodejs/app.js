// Handlers the runtime tests call through the agent (our client and aws-lambda-ric alike). CommonJS.
exports.echo = async (event) => event;

exports.ctx = async (event, context) => {
  const first = context.getRemainingTimeInMillis();
  await new Promise((r) => setTimeout(r, 50));
  const second = context.getRemainingTimeInMillis();
  return {
    aws_request_id: context.awsRequestId,
    function_name: context.functionName,
    function_version: context.functionVersion,
    invoked_function_arn: context.invokedFunctionArn,
    memory_limit_in_mb: String(context.memoryLimitInMB),
    log_group_name: context.logGroupName,
    log_stream_name: context.logStreamName,
    identity: context.identity
      ? { cognito_identity_id: context.identity.cognitoIdentityId, cognito_identity_pool_id: context.identity.cognitoIdentityPoolId }
      : null,
    client_context: context.clientContext
      ? { installation_id: context.clientContext.client.installation_id, custom: context.clientContext.custom, env: context.clientContext.env }
      : null,
    remaining: [first, second],
    trace_id: process.env._X_AMZN_TRACE_ID,
    env: { AWS_REGION: process.env.AWS_REGION, AWS_EXECUTION_ENV: process.env.AWS_EXECUTION_ENV, TZ: process.env.TZ, GREETING: process.env.GREETING ?? null },
    callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
  };
};

exports.fail = async (event) => {
  throw new Error("boom: " + event.why);
};

exports.sleep = async (event) => {
  await new Promise((r) => setTimeout(r, event.seconds * 1000));
  return { slept: event.seconds };
};

exports.log = async () => {
  console.log("logged from the handler");
  return "ok";
};

exports.levels = async () => {
  console.debug("debug line");
  console.info("info line");
  console.warn("warn line");
  console.error("error line");
  console.log("printed line");
  return "ok";
};

exports.unserialisable = async () => {
  const a = {};
  a.self = a;
  return a;
};

exports.crash = async () => {
  process.exit(3);
};

// Callback style: the answer waits for the event loop to empty (callbackWaitsForEmptyEventLoop).
exports.callback = (event, context, callback) => {
  const out = { order: [] };
  setTimeout(() => out.order.push("timer"), 30);
  out.order.push("sync");
  callback(null, out);
};

exports.callbackError = (event, context, callback) => callback(new TypeError("bad callback"));

exports.nested = { deeper: async () => "nested export" };

exports.grow = async (event) => "a".repeat(event.size - 2); // a JSON string of exactly event.size bytes
