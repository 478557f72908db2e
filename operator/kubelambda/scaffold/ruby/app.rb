# Lambda's Ruby handler: keyword arguments event (parsed JSON) and context.
def handler(event:, context:)
  name = (event || {}).fetch('name', 'world')
  puts "Greeting #{name}"
  { message: "#{ENV.fetch('GREETING', 'Hello')}, #{name}!", requestId: context.aws_request_id }
end
