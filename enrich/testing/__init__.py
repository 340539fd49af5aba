"""Local fakes of the outside services, speaking the real wire protocols.

- :mod:`enrich.testing.fake_twilio`: Twilio's REST API (media + Messages) and its media
  CDN, over real HTTP on two loopback origins.
- :mod:`enrich.testing.fake_speech`: Google Speech-to-Text v1 ``Recognize`` over real gRPC.

Both are importable (started in-process by tests) and runnable on their own
(``python -m enrich.testing.fake_twilio``, ``python -m enrich.testing.fake_speech``) for the
bench and for local runs. They never reach the network beyond 127.0.0.1.
"""
