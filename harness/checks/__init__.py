"""Reply checks that read a reply as a customer would: its meaning, intent, language and repetition, and behaviour
cases with expectations (suites of YAML), each a small function over libraries."""
