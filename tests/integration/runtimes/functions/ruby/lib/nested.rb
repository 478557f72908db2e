# frozen_string_literal: true

def handler(event:, context:)
  { nested: true, name: event['name'] }
end
