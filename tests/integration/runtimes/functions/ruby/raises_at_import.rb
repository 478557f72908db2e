# frozen_string_literal: true

raise 'cannot start'
