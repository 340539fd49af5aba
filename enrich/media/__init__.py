"""Sans-I/O building blocks for MMS media, plus audio decoding.

- :mod:`enrich.media.sniff`: what a downloaded item really is, from its first bytes
  (the declared Content-Type is only a tie-breaker).
- :mod:`enrich.media.policy`: the SSRF-safe fetch policy (which URLs may be fetched,
  which redirects followed, where credentials may go, which resolved addresses are
  acceptable), as pure functions over plain data; the trio/httpx shell applies it.
- :mod:`enrich.media.vcard`: tolerant vCard 2.1/3.0/4.0 parsing into contacts.
- :mod:`enrich.media.audio`: PyAV/FFmpeg decoding to 16-bit mono PCM (synchronous:
  callers run it in a worker thread), PCM chunking and WAV wrapping.
"""
