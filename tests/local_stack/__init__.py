"""The local stack's parts: front, scheduler, SQS event sources, function discovery."""
