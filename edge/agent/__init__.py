"""The device agent: follows the fleet's desired state (activation state machine) and drains the outbox."""
