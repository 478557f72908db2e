# frozen_string_literal: true

# Handlers the Ruby runtime tests call through the agent: handler(event:, context:).

def echo(event:, context:)
  event
end

def ctx(event:, context:)
  first = context.get_remaining_time_in_millis
  sleep 0.05
  second = context.get_remaining_time_in_millis
  cc = context.client_context
  {
    aws_request_id: context.aws_request_id,
    function_name: context.function_name,
    function_version: context.function_version,
    invoked_function_arn: context.invoked_function_arn,
    memory_limit_in_mb: context.memory_limit_in_mb.to_s,
    log_group_name: context.log_group_name,
    log_stream_name: context.log_stream_name,
    identity: context.identity && {
      cognito_identity_id: context.identity['cognitoIdentityId'],
      cognito_identity_pool_id: context.identity['cognitoIdentityPoolId']
    },
    client_context: cc && { installation_id: cc['client']['installation_id'], custom: cc['custom'], env: cc['env'] },
    remaining: [first, second],
    trace_id: ENV.fetch('_X_AMZN_TRACE_ID', nil),
    env: %w[AWS_REGION AWS_EXECUTION_ENV TZ GREETING].to_h { |k| [k, ENV.fetch(k, nil)] }
  }
end

def fail(event:, context:)
  raise ArgumentError, "boom: #{event['why']}"
end

def sleep_for(event:, context:)
  sleep event['seconds']
  { slept: event['seconds'] }
end

def crash(event:, context:)
  exit! 3
end

def grow(event:, context:)
  'a' * (event['size'] - 2) # a JSON string of exactly event["size"] bytes
end

def log(event:, context:)
  puts 'printed from the handler'
  'ok'
end

module Shop
  # A class method handler: file.Module::Class.method
  class Orders
    def self.total(event:, context:)
      { id: event['id'], total: event['items'].sum { |i| i['quantity'] * i['price'] }, request: context.aws_request_id }
    end
  end
end
