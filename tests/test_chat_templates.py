from weightprint.chat_templates import chat_template_family


def test_families() -> None:
    assert chat_template_family(None) == "none"
    assert chat_template_family("  ") == "none"
    assert chat_template_family("{{'<|im_start|>' + m['role']}}") == "ChatML"
    assert chat_template_family("<|start_header_id|>user<|end_header_id|>") == "Llama-3"
    assert chat_template_family("<start_of_turn>user") == "Gemma"
    assert chat_template_family("[INST] <<SYS>>\n{{ system }}\n<</SYS>>") == "Llama-2"
    assert chat_template_family("{{ bos_token }}[INST] {{ m }} [/INST]") == "Mistral"
    assert chat_template_family("<|user|>\n{{ m }}<|end|>") == "Phi-3"
    assert chat_template_family("User: {{ m }}") == "other"
