"""RawSelinuxProfile policies: the docs' and upstream's, which must pass, and escapes, which must not.

Every escape compiles with secilc inside a profile's block next to the container template and the
reference policy (tests/test_raw_selinux_secilc.py shows it), so each one is a real way out of the
block, not a typo. Type names are those of Debian's reference policy plus `spc_t`, the privileged
container type that container-selinux adds.
"""

from __future__ import annotations

from dataclasses import dataclass

INHERIT = "(blockinherit container)\n"


@dataclass(frozen=True)
class Policy:
    id: str
    text: str
    # The block the node agent wraps the policy in; the docs' example names its own block's type.
    block: str = "escapetest"


@dataclass(frozen=True)
class Escape:
    id: str
    text: str
    # What the refusal must quote: the offending statement, or the syntax error.
    culprit: str


ACCEPTED = [
    # Docs 7.7.1: the CIL that SelinuxProfile nginx-secure becomes, as a raw policy (the block's body).
    Policy(
        "docs-nginx-secure",
        INHERIT + "(allow process nginx-secure.process ( tcp_socket ( listen )))\n"
        "(allow process http_cache_port_t ( tcp_socket ( name_bind )))\n"
        "(allow process node_t ( tcp_socket ( node_bind )))\n",
        block="nginx-secure",
    ),
    # Docs 7.7.2.1: what `permissive: true` adds; also upstream's selinuxrecording policy.
    Policy("docs-permissive", INHERIT + "(typepermissive process)\n"),
    # Upstream's examples/rawselinuxprofile.yaml and e2e raw policy (upstream's validation refuses it).
    Policy(
        "upstream-errorlogger",
        INHERIT + "(allow process var_log_t ( dir ( open read getattr lock search ioctl add_name "
        "remove_name write )))\n"
        "(allow process var_log_t ( file ( getattr read write append ioctl lock map open create  )))\n"
        "(allow process var_log_t ( sock_file ( getattr read write append open  )))\n",
    ),
    Policy("inherit-only", INHERIT),
    Policy(
        "comments-and-spacing",
        "; errorlogger, by hand\n(  blockinherit\n\tcontainer ) ; the template\r\n"
        "(allow process var_log_t (file (read)));)\n",
    ),
    Policy("self-target", INHERIT + "(allow process self (capability (chown)))\n"),
    Policy("transition-to-self", INHERIT + "(allow process self (process (transition getattr)))\n"),
    Policy(
        "own-declared-type",
        INHERIT + "(type logdir)\n(allow process logdir (dir (read)))\n(allow logdir self (file (read)))\n",
    ),
    Policy("no-template-own-process", "(type process)\n(allow process var_log_t (file (read)))\n"),
    Policy("global-target", INHERIT + "(allow process .var_log_t (file (read)))\n"),
]

ESCAPES = [
    # Permissions for domains that are not the profile's.
    Escape("global-source", INHERIT + "(allow init_t shadow_t (file (read open)))", "(allow init_t"),
    Escape("global-source-dotted", INHERIT + "(allow .sysadm_t shadow_t (file (read)))", "(allow .sysadm_t"),
    Escape("attribute-source", INHERIT + "(allow domain shadow_t (file (read open)))", "(allow domain"),
    Escape(
        "template-type-source",
        INHERIT + "(allow container.process shadow_t (file (read)))",
        "(allow container.process",
    ),
    Escape("dontaudit-global", INHERIT + "(dontaudit init_t shadow_t (file (read)))", "(dontaudit"),
    Escape("auditallow-global", INHERIT + "(auditallow init_t shadow_t (file (read)))", "(auditallow"),
    Escape("allowx-global", INHERIT + "(allowx init_t shadow_t (ioctl file (0x5401)))", "(allowx"),
    Escape("typepermissive-global", INHERIT + "(typepermissive init_t)", "(typepermissive init_t)"),
    # Global attributes and aliases.
    Escape("typeattributeset-domain", INHERIT + "(typeattributeset .domain (process))", "(typeattributeset"),
    Escape(
        "typeattributeset-global-type",
        INHERIT + "(typeattributeset file_type (shadow_t))",
        "(typeattributeset",
    ),
    Escape(
        "local-attribute-of-global-type",
        INHERIT + "(typeattribute a)\n(typeattributeset a (init_t))\n(allow a shadow_t (file (read)))",
        "(typeattribute a)",
    ),
    Escape(
        "alias-of-global-type",
        INHERIT + "(typealias a)\n(typealiasactual a .init_t)\n(allow a shadow_t (file (read)))",
        "(typealias a)",
    ),
    Escape("expandtypeattribute", INHERIT + "(expandtypeattribute (domain) false)", "(expandtypeattribute"),
    Escape("typebounds", INHERIT + "(typebounds sysadm_t process)", "(typebounds"),
    # Transitions and labelling.
    Escape(
        "typetransition-global", INHERIT + "(typetransition sysadm_t bin_t process spc_t)", "(typetransition"
    ),
    Escape(
        "typetransition-own-to-spc",
        INHERIT + "(typetransition process bin_t process spc_t)",
        "(typetransition",
    ),
    Escape(
        "typetransition-named",
        INHERIT + '(typetransition init_t etc_t file "shadow" shadow_t)',
        "(typetransition init_t",
    ),
    Escape("typechange", INHERIT + "(typechange init_t shadow_t file etc_t)", "(typechange"),
    Escape("typemember", INHERIT + "(typemember init_t shadow_t file etc_t)", "(typemember"),
    Escape(
        "filecon",
        INHERIT + '(filecon "/etc/shadow" file (system_u object_r etc_t ((s0) (s0))))',
        "(filecon",
    ),
    Escape(
        "portcon",
        INHERIT + "(portcon tcp 2222 (system_u object_r http_cache_port_t ((s0) (s0))))",
        "(portcon",
    ),
    Escape(
        "genfscon", INHERIT + '(genfscon proc "/kcore" (system_u object_r etc_t ((s0) (s0))))', "(genfscon"
    ),
    Escape("defaulttype", INHERIT + "(defaulttype file source)", "(defaulttype"),
    Escape("constrain", INHERIT + "(constrain (file (read)) (eq t1 t2))", "(constrain"),
    Escape("policycap", INHERIT + "(policycap always_check_network)", "(policycap"),
    # Roles and users.
    Escape("roletype-global-role", INHERIT + "(roletype sysadm_r process)", "(roletype"),
    Escape("roleallow", INHERIT + "(roleallow system_r sysadm_r)", "(roleallow"),
    Escape(
        "allow-transition-to-spc",
        INHERIT + "(allow process spc_t (process (transition)))",
        "(allow process spc_t",
    ),
    Escape(
        "allow-dyntransition-global",
        INHERIT + "(allow process sysadm_t (process (getattr dyntransition)))",
        "(allow process sysadm_t",
    ),
    Escape("roletransition", INHERIT + "(roletransition system_r bin_t process sysadm_r)", "(roletransition"),
    Escape(
        "role-for-global-type", INHERIT + "(role r)\n(roletype r init_t)\n(userrole system_u r)", "(role r)"
    ),
    Escape("userrole", INHERIT + "(userrole user_u sysadm_r)", "(userrole"),
    Escape("selinuxuser", INHERIT + '(selinuxuser "root" system_u ((s0) (s0)))', "(selinuxuser"),
    # Statements that hide or move other statements.
    Escape(
        "macro-call",
        INHERIT + "(macro m ((type t)) (allow t shadow_t (file (read))))\n(call m (.init_t))",
        "(macro m",
    ),
    Escape("in-template", INHERIT + "(in container (allow process shadow_t (file (read))))", "(in container"),
    Escape("in-global", INHERIT + "(in .container (typeattributeset .domain (process)))", "(in .container"),
    Escape("blockabstract", INHERIT + "(blockabstract container)", "(blockabstract"),
    Escape("nested-block", INHERIT + "(block inner (allow .init_t shadow_t (file (read))))", "(block inner"),
    Escape("optional", INHERIT + "(optional o (allow init_t shadow_t (file (read))))", "(optional"),
    Escape(
        "booleanif",
        INHERIT + "(booleanif allow_ptrace (true (allow init_t shadow_t (file (read)))))",
        "(booleanif",
    ),
    Escape(
        "tunableif",
        INHERIT + "(tunable t true)\n(tunableif t (true (allow init_t shadow_t (file (read)))))",
        "(tunable t true)",
    ),
    Escape(
        "classpermission-global-source",
        INHERIT + "(classpermission cp)\n(classpermissionset cp (file (read)))\n(allow init_t shadow_t cp)",
        "(classpermission cp)",
    ),
    # Comment, string and syntax tricks.
    Escape("quoted-keyword", INHERIT + '("typepermissive" init_t)', '("typepermissive"'),
    Escape("quoted-source", INHERIT + '(allow "init_t" shadow_t (file (read)))', '(allow "init_t"'),
    Escape(
        "comment-between-keyword-and-source",
        INHERIT + "(allow ; process\n init_t shadow_t (file (read)))",
        "(allow ; process init_t",
    ),
    Escape(
        "comment-hides-a-paren",
        INHERIT + "(allow process self (file (read))) ; )\n(typepermissive init_t)",
        "(typepermissive init_t)",
    ),
    Escape(
        "carriage-return-ends-a-comment",
        INHERIT + "; note\r(typepermissive init_t)",
        "(typepermissive init_t)",
    ),
    Escape(
        "parens-in-string",
        INHERIT + '(typetransition init_t etc_t file "a ) (block x" shadow_t)',
        '(typetransition init_t etc_t file "a ) (block x"',
    ),
    Escape("tabs", INHERIT + "(\ttypepermissive\tinit_t\t)", "( typepermissive init_t )"),
    Escape("block-escape", INHERIT + ") (typepermissive init_t) (block x", "unmatched closing parenthesis"),
    Escape(
        "upstream-cve-payload",
        INHERIT + "(allow process self (capability (sys_admin))) )\n"
        "\t\t\t(typepermissive spc_t) (allow init_t shadow_t (file (read open))) (block x",
        "unmatched closing parenthesis",
    ),
]
