"""One vocabulary for what a chat turn is routed on: `logo-cpp chat --route-on` and `logo-cpp serve
--chat-route-on` take last-user / conversation, and the names each used before (chat: message, serve: prompt)
still parse, to the same choices; anything else is refused naming the choices."""

import pytest

import logo_cpp
from conftest import THREADS
from logo_cpp.chat import DEFAULT_ROUTE_ON, ROUTE_ON, ChatSession, route_on_choice
from logo_cpp.cli import build_parser

SPELLINGS = [("last-user", "last-user"), ("conversation", "conversation"), ("message", "last-user"),
             ("prompt", "conversation")]


def parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("given,name", SPELLINGS)
def test_both_commands_parse_every_spelling_to_one_name(given, name):
    assert parse("chat", "--route-on", given).route_on == name
    assert parse("serve", "--chat-route-on", given).chat_route_on == name
    assert route_on_choice(given) == name


def test_the_default_is_the_same_for_both():
    assert ROUTE_ON == ("last-user", "conversation") and DEFAULT_ROUTE_ON == "last-user"
    assert parse("chat").route_on == parse("serve").chat_route_on == DEFAULT_ROUTE_ON


@pytest.mark.parametrize("argv", [("chat", "--route-on", "system"), ("serve", "--chat-route-on", "last-message")])
def test_an_unknown_name_is_refused_by_the_parser_naming_the_choices(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{argv[-1]}'" in err and "'last-user', 'conversation'" in err, err


def test_help_lists_the_names_and_the_aliases(capsys):
    for argv in (("chat", "--help"), ("serve", "--help")):
        with pytest.raises(SystemExit):
            parse(*argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "{last-user,conversation}" in out and "message = last-user" in out and "prompt = conversation" in out


def test_python_settings_take_the_aliases_and_refuse_the_rest(model_dir):
    from logo_cpp.server.app import Server, ServerConfig

    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model)
    for given, name in SPELLINGS:
        assert ChatSession(model, route_on=given, max_tokens=4).route_on == name
        config = ServerConfig(n_slots=1, n_ctx=64, chat_route_on=given, warm_up=False)
        server = Server(model, pool, config)
        assert server.config.chat_route_on == name
        server.close()
    with pytest.raises(ValueError, match=r"route_on must be one of last-user, conversation .*got 'both'"):
        ChatSession(model, route_on="both", max_tokens=4)
    with pytest.raises(ValueError, match=r"chat_route_on must be one of last-user, conversation .*got None"):
        Server(model, pool, ServerConfig(n_slots=1, n_ctx=64, chat_route_on=None, warm_up=False))
