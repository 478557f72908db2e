# frozen_string_literal: true

# kubelambda's Lambda runtime client for Ruby (standard library only: Net::HTTP and JSON).
#
# Started by the agent as `ruby $LAMBDA_RUNTIME_DIR/bootstrap.rb`. It loads $_HANDLER from $LAMBDA_TASK_ROOT,
# `file.method` (a method defined at the top level of file.rb) or `file.Module::Class.method` (a class or
# module method), with `/` allowed in the file path, and calls it as `handler(event:, context:)` for every
# event of the Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API, one at a time.
#
# Errors use Lambda's Ruby error types: `Init<ErrorClass>` for failures while loading the handler,
# `Function<ErrorClass>` for exceptions raised by it, `Runtime.MalformedHandlerName` for a bad handler
# string and `Runtime.MarshalError` for a result that cannot become JSON.

require 'json'
require 'net/http'
require 'time'

$stdout.sync = true
$stderr.sync = true

module KubelambdaRuntime
  API_VERSION = '2018-06-01'
  ERROR_CONTENT_TYPE = 'application/vnd.aws.lambda.error+json'

  # An error with a Lambda error type, reported to the Runtime API as it is.
  class Fault < StandardError
    attr_reader :error_type, :trace

    def initialize(error_type, message, trace = [])
      super(message)
      @error_type = error_type
      @trace = trace
    end

    def to_lambda
      { errorMessage: message, errorType: error_type, stackTrace: trace }
    end
  end

  def self.error_json(error, classification)
    return error.to_lambda if error.is_a?(Fault)

    {
      errorMessage: error.message,
      errorType: "#{classification}<#{error.class}>",
      stackTrace: (error.backtrace || []).reject { |line| line.start_with?(__FILE__, '<internal:') }
    }
  end

  # The Runtime API over one kept-alive HTTP/1.1 connection.
  class Client
    def initialize(address)
      host, _, port = address.rpartition(':')
      @http = Net::HTTP.new(host, Integer(port))
      @http.read_timeout = nil # `next` blocks until there is an event
      @http.keep_alive_timeout = 3600
      @http.start
      @prefix = "/#{API_VERSION}/runtime"
    end

    def next_invocation
      response = @http.request(Net::HTTP::Get.new("#{@prefix}/invocation/next"))
      raise "GET /runtime/invocation/next answered #{response.code}: #{response.body}" unless response.code == '200'

      response
    end

    def send_response(request_id, body)
      post("#{@prefix}/invocation/#{request_id}/response", body, 'application/json')
    end

    def send_error(request_id, error)
      post("#{@prefix}/invocation/#{request_id}/error", JSON.generate(error), ERROR_CONTENT_TYPE, error[:errorType])
    end

    def send_init_error(error)
      post("#{@prefix}/init/error", JSON.generate(error), ERROR_CONTENT_TYPE, error[:errorType])
    end

    private

    def post(path, body, content_type, error_type = nil)
      request = Net::HTTP::Post.new(path)
      request['Content-Type'] = content_type
      request['Lambda-Runtime-Function-Error-Type'] = error_type if error_type
      request.body = body
      @http.request(request)
    end
  end

  # The context a handler gets, with the names of Lambda's Ruby runtime.
  class LambdaContext
    attr_reader :aws_request_id, :invoked_function_arn, :log_group_name, :log_stream_name, :function_name,
                :memory_limit_in_mb, :function_version, :identity, :client_context, :deadline_ms

    def initialize(headers)
      @aws_request_id = headers['lambda-runtime-aws-request-id']
      @invoked_function_arn = headers['lambda-runtime-invoked-function-arn']
      @deadline_ms = Integer(headers['lambda-runtime-deadline-ms'] || (now_ms + 3000))
      @log_group_name = ENV.fetch('AWS_LAMBDA_LOG_GROUP_NAME', nil)
      @log_stream_name = ENV.fetch('AWS_LAMBDA_LOG_STREAM_NAME', nil)
      @function_name = ENV.fetch('AWS_LAMBDA_FUNCTION_NAME', nil)
      @memory_limit_in_mb = ENV.fetch('AWS_LAMBDA_FUNCTION_MEMORY_SIZE', nil)
      @function_version = ENV.fetch('AWS_LAMBDA_FUNCTION_VERSION', nil)
      @identity = parse_optional(headers['lambda-runtime-cognito-identity'])
      @client_context = parse_optional(headers['lambda-runtime-client-context'])
    end

    def get_remaining_time_in_millis # rubocop:disable Naming/AccessorMethodName -- Lambda's name
      [@deadline_ms - now_ms, 0].max
    end

    private

    def now_ms
      Process.clock_gettime(Process::CLOCK_REALTIME, :millisecond)
    end

    def parse_optional(text)
      return nil if text.nil? || text.empty?

      JSON.parse(text)
    rescue JSON::ParserError
      nil
    end
  end

  # `file.method` or `file.Module::Class.method`, loaded from the task root.
  class Handler
    HANDLER_FORMAT = %r{\A(?<file>(?:[^/]+/)*[^./]+)\.(?:(?<owner>[A-Z][\w]*(?:::[A-Z][\w]*)*)\.)?(?<method>[a-z_][\w]*[?!]?)\z}

    def initialize(spec, task_root)
      match = HANDLER_FORMAT.match(spec.to_s)
      unless match
        raise Fault.new('Runtime.MalformedHandlerName',
                        "Bad handler '#{spec}': want file.method or file.Module::Class.method")
      end

      @method = match[:method].to_sym
      begin
        require File.join(task_root, match[:file])
        @receiver = match[:owner] ? Object.const_get(match[:owner]) : TOPLEVEL_BINDING.receiver
      rescue ScriptError, StandardError => e # ScriptError: LoadError and SyntaxError
        # The first line only: Ruby's error_highlight appends the bootstrap's own source line to NameErrors.
        raise Fault.new("Init<#{e.class}>", e.message.lines.first.to_s.chomp,
                        KubelambdaRuntime.error_json(e, 'Init')[:stackTrace])
      end
      return if @receiver.respond_to?(@method, !match[:owner])

      owner = match[:owner] || 'main'
      raise Fault.new('Init<NoMethodError>', "undefined method `#{@method}' for #{owner} (handler '#{spec}')")
    end

    def call(event, context)
      @receiver.__send__(@method, event: event, context: context)
    end
  end

  def self.run
    client = Client.new(ENV.fetch('AWS_LAMBDA_RUNTIME_API'))
    begin
      handler = Handler.new(ARGV[0] || ENV.fetch('_HANDLER', nil), ENV.fetch('LAMBDA_TASK_ROOT', '/var/task'))
    rescue Fault => e
      warn JSON.generate(e.to_lambda)
      client.send_init_error(e.to_lambda)
      exit 1
    end
    loop { serve_one(client, handler) }
  end

  def self.serve_one(client, handler)
    invocation = client.next_invocation
    headers = invocation.each_header.to_h
    request_id = headers['lambda-runtime-aws-request-id']
    trace = headers['lambda-runtime-trace-id']
    trace ? ENV['_X_AMZN_TRACE_ID'] = trace : ENV.delete('_X_AMZN_TRACE_ID')
    begin
      event = JSON.parse(invocation.body || 'null')
      result = handler.call(event, LambdaContext.new(headers))
    rescue StandardError, ScriptError, SystemStackError, NoMemoryError => e
      error = error_json(e, 'Function')
      warn JSON.generate(error)
      client.send_error(request_id, error)
      return
    end
    begin
      body = JSON.generate(result, quirks_mode: true)
    rescue StandardError => e
      error = { errorMessage: "Unable to marshal response: #{e.message}", errorType: 'Runtime.MarshalError',
                stackTrace: [] }
      client.send_error(request_id, error)
      return
    end
    client.send_response(request_id, body)
  end
end

KubelambdaRuntime.run if $PROGRAM_NAME == __FILE__
