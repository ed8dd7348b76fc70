"""The AWS deployment (deploy/aws/): every CloudFormation template under deploy/ lints clean, and the
properties the templates promise hold, read from the templates themselves:

- no security group admits the internet; the database admits 5432 only from the Lambda's and the ECS
  tasks' groups; RDS is PostgreSQL 15, private, encrypted, protected, its master password RDS-managed;
- no environment variable holds a secret value or a deploy-time {{resolve:secretsmanager:...}}: only
  V_SECRET_ID ids of the runtime secrets contract, and each process's role may read exactly the
  secrets its environment names (and no GetSecretValue on "*");
- the Lambda and every ECS task run in the private subnets, whose default route is a NAT gateway;
- deploy/aws/dagster.yaml passes Dagster's own config validation, with the ECS run launcher wired to
  the run task definition of the stack.

Fast (cfn-lint on four templates, YAML parsing): no AWS account, network or Docker needed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
AWS = DEPLOY / "aws"

# The region the stacks are deployed to (the prototype's): cfn-lint checks resource types, instance
# classes and engine versions against it.
REGIONS = ["ap-southeast-2"]
# cfn-lint rules ignored: none. (Add a rule id here only with a comment saying why it does not apply.)
IGNORED_RULES: list[str] = []

EXPECTED_TEMPLATES = {"aws/network.yaml", "aws/database.yaml", "aws/oauth-service.yaml",
                      "aws/dagster-ecs.yaml"}

# The runtime secrets contract: V_SECRET_ID=<secret id or ARN>[#<json key>] for these V.
SECRET_VARS = {"XERO_CLIENT_ID", "XERO_CLIENT_SECRET", "XERO_WEBHOOK_KEY", "TOKEN_ENCRYPTION_KEY",
               "AUTH_JWT_SECRET", "DATABASE_URL", "APP_DATABASE_URL", "PIPELINE_DATABASE_URL",
               "DAGSTER_POSTGRES_URL"}
# Which secret (parameter naming it, or database-stack export) and JSON key each variable may come from.
XERO = "XeroCredentialsSecretName"
TOKEN_KEYS = "TokenKeysSecretName"
JSON_KEYS = {
    "XERO_CLIENT_ID": (XERO, "client_id"),
    "XERO_CLIENT_SECRET": (XERO, "client_secret"),
    "XERO_WEBHOOK_KEY": (XERO, "webhook_key"),
    "TOKEN_ENCRYPTION_KEY": (TOKEN_KEYS, "token_encryption_key"),
    "AUTH_JWT_SECRET": (TOKEN_KEYS, "auth_jwt_secret"),
}
# Database URL variables: a whole RDS-style login secret (database.yaml's exports), no JSON key.
LOGIN_SECRETS = {"MasterSecretArn", "ServiceLoginSecretArn", "PipelineLoginSecretArn",
                 "DagsterLoginSecretArn"}
NOT_A_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|CREDENTIAL|_KEY$")
# The only actions allowed on Resource "*": AWS offers no resource-level permissions for them.
STAR_RESOURCE_ACTIONS = {"ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition",
                         "ec2:DescribeNetworkInterfaces"}
# The run task's entry point: sets V from each V_SECRET_ID, then execs its arguments (the launcher's command).
SECRETS_ENTRY_POINT = ["python", "-m", "oauth_service.secret_source"]


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads CloudFormation's short tags (!Ref ...) as plain nodes, only to classify files."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _is_template(path: Path) -> bool:
    """A CloudFormation template: a YAML/JSON document with top-level Resources (the Dagster instance
    and workspace files under deploy/ have none)."""
    try:
        document = yaml.load(path.read_text(), Loader=_TagTolerantLoader)  # noqa: S506 - tags ignored
    except yaml.YAMLError:
        return False
    return isinstance(document, dict) and "Resources" in document


def _templates() -> list[str]:
    """Every template under deploy/ (whatever its folder): each is linted and checked below."""
    return sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*")
                  if p.suffix in (".yaml", ".yml", ".json", ".template") and _is_template(p))


def _load(rel: str) -> dict[str, Any]:
    """A template as CloudFormation reads it (cfn-lint's decoder: short tags become Fn:: / Ref)."""
    template, errors = decode(str(DEPLOY / rel))
    assert not errors, [str(e) for e in errors]
    return template


def _resources(template: dict, *types: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] in types}


def _walk(node: Any):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def network() -> dict:
    return _load("aws/network.yaml")


@pytest.fixture(scope="module")
def database() -> dict:
    return _load("aws/database.yaml")


@pytest.fixture(scope="module")
def oauth() -> dict:
    return _load("aws/oauth-service.yaml")


@pytest.fixture(scope="module")
def ecs() -> dict:
    return _load("aws/dagster-ecs.yaml")


@pytest.fixture(scope="module")
def all_templates() -> dict[str, dict]:
    return {rel: _load(rel) for rel in _templates()}


# ---------------------------------------------------------------------------------------------- lint
def test_the_four_stacks_are_found_as_templates():
    assert set(_templates()) >= EXPECTED_TEMPLATES
    # The Dagster instance files are not templates (and so are not linted as such).
    assert not _is_template(AWS / "dagster.yaml") and not _is_template(DEPLOY / "dagster.yaml")


@pytest.mark.parametrize("rel", _templates())
def test_template_passes_cfn_lint_without_errors_or_warnings(rel):
    matches = lint_file(DEPLOY / rel, ManualArgs(regions=REGIONS, ignore_checks=IGNORED_RULES))
    assert [str(m) for m in matches] == []


def test_cfn_lint_does_catch_a_bad_template(tmp_path):
    """The lint test can fail: a mistyped property in a copy of a real template is reported."""
    bad = tmp_path / "network.yaml"
    bad.write_text((AWS / "network.yaml").read_text().replace("EnableDnsHostnames:", "EnableDnsHostname:"))
    assert any("EnableDnsHostname" in str(m) for m in lint_file(bad, ManualArgs(regions=REGIONS)))


def test_every_import_is_exported_by_the_stack_it_names(all_templates, network, database):
    """A mistyped export name would only fail at deploy time: check each Fn::ImportValue here."""
    producers = {"NetworkStack": network, "DatabaseStack": database}
    imports = 0
    for rel, template in all_templates.items():
        for node in _walk(template):
            if isinstance(node, dict) and "Fn::ImportValue" in node:
                stack, _, name = node["Fn::ImportValue"]["Fn::Sub"].partition("-")
                parameter = stack.strip("${}")
                export = producers[parameter]["Outputs"][name]["Export"]["Name"]
                assert export == {"Fn::Sub": "${AWS::StackName}-" + name}, rel
                assert parameter in template["Parameters"], rel
                imports += 1
    assert imports > 30


# ------------------------------------------------------------------------------------------- network
def _ingress_rules(template: dict) -> list[tuple[str, dict]]:
    rules = []
    for name, r in _resources(template, "AWS::EC2::SecurityGroup").items():
        rules += [(name, rule) for rule in r["Properties"].get("SecurityGroupIngress", [])]
    for name, r in _resources(template, "AWS::EC2::SecurityGroupIngress").items():
        rules.append((name, r["Properties"]))
    return rules


def test_no_security_group_admits_the_internet(all_templates):
    for rel, template in all_templates.items():
        for name, rule in _ingress_rules(template):
            assert rule.get("CidrIpv6") not in ("::/0",), (rel, name)
            cidr = rule.get("CidrIp")
            assert cidr != "0.0.0.0/0", (rel, name)
            if isinstance(cidr, dict):  # a parameter: it has no default, and a Rule refuses 0.0.0.0/0
                parameter = cidr["Ref"]
                assert "Default" not in template["Parameters"][parameter], (rel, name)
                refusal = {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, "0.0.0.0/0"]}]}
                assertions = [a["Assert"] for rule_ in template.get("Rules", {}).values()
                              for a in rule_["Assertions"]]
                assert refusal in assertions, (rel, name)


def test_the_database_admits_5432_only_from_the_lambda_and_ecs_groups(all_templates, network, database):
    group = network["Resources"]["DatabaseSecurityGroup"]["Properties"]
    sources = set()
    for rule in group["SecurityGroupIngress"]:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 5432, 5432)
        assert set(rule) == {"Description", "IpProtocol", "FromPort", "ToPort", "SourceSecurityGroupId"}
        sources.add(rule["SourceSecurityGroupId"]["Fn::GetAtt"][0])
    assert sources == {"LambdaSecurityGroup", "EcsTasksSecurityGroup"}
    # Nothing else opens it: no separate ingress resource names the database's group, in any stack.
    for rel, template in all_templates.items():
        for name, r in _resources(template, "AWS::EC2::SecurityGroupIngress").items():
            assert "DatabaseSecurityGroup" not in json.dumps(r["Properties"]["GroupId"]), (rel, name)
    instance = database["Resources"]["Database"]["Properties"]
    assert instance["VPCSecurityGroups"] == [
        {"Fn::ImportValue": {"Fn::Sub": "${NetworkStack}-DatabaseSecurityGroupId"}}]
    assert network["Outputs"]["DatabaseSecurityGroupId"]["Value"] == {
        "Fn::GetAtt": ["DatabaseSecurityGroup", "GroupId"]}


def _route_target_nats(network: dict, subnet: str) -> list[str]:
    """The NAT gateways the subnet's default route points at ([] if it has none)."""
    res = network["Resources"]
    tables = [r["Properties"]["RouteTableId"]["Ref"]
              for r in _resources(network, "AWS::EC2::SubnetRouteTableAssociation").values()
              if r["Properties"]["SubnetId"] == {"Ref": subnet}]
    assert len(tables) == 1, subnet
    nats = []
    for r in _resources(network, "AWS::EC2::Route").values():
        p = r["Properties"]
        if p["RouteTableId"] == {"Ref": tables[0]} and p["DestinationCidrBlock"] == "0.0.0.0/0":
            target = p.get("NatGatewayId")
            assert target is not None, f"{subnet}: default route not through a NAT gateway"
            # {"Ref": NAT} or {"Fn::If": [cond, {"Ref": NAT}, {"Ref": NAT}]}
            refs = target["Fn::If"][1:] if "Fn::If" in target else [target]
            for ref in refs:
                assert res[ref["Ref"]]["Type"] == "AWS::EC2::NatGateway"
                nats.append(ref["Ref"])
    return nats


def _private_subnets(network: dict) -> list[str]:
    joined = network["Outputs"]["PrivateSubnetIds"]["Value"]["Fn::Join"]
    assert joined[0] == ","
    return [ref["Ref"] for ref in joined[1]]


def test_the_private_subnets_reach_the_internet_only_through_nat(network):
    res = network["Resources"]
    private = _private_subnets(network)
    assert len(private) == 2
    azs = {json.dumps(res[s]["Properties"]["AvailabilityZone"]) for s in private}
    assert len(azs) == 2, "two AZs"
    for subnet in private:
        assert res[subnet]["Properties"]["MapPublicIpOnLaunch"] is False
        nats = _route_target_nats(network, subnet)
        assert nats, f"{subnet} has no default route"
        for nat in nats:  # each NAT gateway sits in a public subnet (default route to the IGW)
            public = res[nat]["Properties"]["SubnetId"]["Ref"]
            assert public not in private
            assert network["Outputs"]["PublicSubnetIds"]["Value"]["Fn::Join"][1].count({"Ref": public}) == 1


PRIVATE_SUBNETS = {"Fn::Split": [",", {"Fn::ImportValue": {"Fn::Sub": "${NetworkStack}-PrivateSubnetIds"}}]}


def test_the_lambda_and_every_ecs_service_run_in_the_private_subnets(oauth, ecs, database):
    vpc = oauth["Resources"]["OAuthFunction"]["Properties"]["VpcConfig"]
    assert vpc["SubnetIds"] == PRIVATE_SUBNETS
    lambda_group = {"Fn::ImportValue": {"Fn::Sub": "${NetworkStack}-LambdaSecurityGroupId"}}
    assert vpc["SecurityGroupIds"] == [lambda_group]
    services = _resources(ecs, "AWS::ECS::Service")
    assert set(services) == {"WebserverService", "DaemonService", "CodeServerService"}
    for name, service in services.items():
        awsvpc = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert awsvpc["AssignPublicIp"] == "DISABLED", name
        assert awsvpc["Subnets"] == PRIVATE_SUBNETS, name
        assert awsvpc["SecurityGroups"] == [
            {"Fn::ImportValue": {"Fn::Sub": "${NetworkStack}-EcsTasksSecurityGroupId"}}], name
    assert database["Resources"]["DatabaseSubnetGroup"]["Properties"]["SubnetIds"] == PRIVATE_SUBNETS
    # The UI's load balancer is internal.
    assert ecs["Resources"]["UiLoadBalancer"]["Properties"]["Scheme"] == "internal"


# ------------------------------------------------------------------------------------------ database
def _parameter_default(template: dict, value: Any) -> Any:
    if isinstance(value, dict) and "Ref" in value:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def test_rds_is_postgresql_15_private_encrypted_and_protected(database):
    instances = _resources(database, "AWS::RDS::DBInstance")
    assert instances
    for name, r in instances.items():
        p = r["Properties"]
        assert p["Engine"] == "postgres"
        assert re.fullmatch(r"15\.\d+", _parameter_default(database, p["EngineVersion"])), name
        if "Ref" in p["EngineVersion"]:
            assert database["Parameters"][p["EngineVersion"]["Ref"]]["AllowedPattern"].startswith(r"^15\.")
        assert p["PubliclyAccessible"] is False
        assert p["StorageEncrypted"] is True
        assert p["DeletionProtection"] is True
        assert int(_parameter_default(database, p["BackupRetentionPeriod"])) >= 7
        assert r["DeletionPolicy"] == r["UpdateReplacePolicy"] == "Snapshot"
        # The master password is RDS's own (Secrets Manager), never a parameter or a literal.
        assert p["ManageMasterUserPassword"] is True
        assert "MasterUserPassword" not in p
    # TLS required (PostgreSQL 15 on RDS allows plain connections by default).
    params = database["Resources"]["DatabaseParameterGroup"]["Properties"]
    assert params["Family"] == "postgres15" and params["Parameters"]["rds.force_ssl"] == "1"
    # No parameter of any kind carries a password default.
    for name, parameter in database["Parameters"].items():
        assert "password" not in name.lower()
        assert parameter.get("NoEcho") is not True, f"{name}: a secret as a parameter"


def test_login_secrets_are_rds_style_json_with_generated_passwords(database):
    secrets = _resources(database, "AWS::SecretsManager::Secret")
    assert set(secrets) == {"ServiceLoginSecret", "PipelineLoginSecret", "DagsterLoginSecret"}
    for name, r in secrets.items():
        generate = r["Properties"]["GenerateSecretString"]
        assert "SecretString" not in r["Properties"]
        assert generate["GenerateStringKey"] == "password" and generate["PasswordLength"] >= 32
        # The template must be JSON once substituted: fill ${...} with stand-ins and parse it.
        text = re.sub(r"\$\{[^}]+Port\}", "5432", generate["SecretStringTemplate"]["Fn::Sub"])
        shape = json.loads(re.sub(r"\$\{[^}]+\}", "x", text))
        assert {"username", "host", "port", "dbname"} <= set(shape), name
        assert f"{name}Arn" in database["Outputs"]
    for export in LOGIN_SECRETS:
        assert database["Outputs"][export]["Export"]["Name"] == {"Fn::Sub": "${AWS::StackName}-" + export}


# ------------------------------------------------------------------------------------ secrets & env
def _env(container: dict) -> dict[str, Any]:
    return {e["Name"]: e["Value"] for e in container["Environment"]}


def _environments(template: dict) -> list[tuple[str, dict[str, Any]]]:
    """(where, {name: value}) for every Lambda function and every ECS container in the template."""
    found = []
    for name, r in _resources(template, "AWS::Serverless::Function", "AWS::Lambda::Function").items():
        found.append((name, dict(r["Properties"].get("Environment", {}).get("Variables", {}))))
    for name, r in _resources(template, "AWS::ECS::TaskDefinition").items():
        for container in r["Properties"]["ContainerDefinitions"]:
            found.append((f"{name}/{container['Name']}", _env(container)))
    if "Globals" in template:
        found.append(("Globals", dict(template["Globals"].get("Function", {}).get("Environment", {})
                                      .get("Variables", {}))))
    return found


def _secret_of_id(value: Any) -> str:
    """The secret a V_SECRET_ID value names: a database-stack export or the parameter naming it."""
    if isinstance(value, dict) and "Fn::If" in value:  # [condition, id, AWS::NoValue] or the reverse
        (branch,) = [v for v in value["Fn::If"][1:] if v != {"Ref": "AWS::NoValue"}]
        return _secret_of_id(branch)
    if "Fn::ImportValue" in value:
        export = value["Fn::ImportValue"]["Fn::Sub"]
        prefix, _, name = export.partition("-")
        assert prefix == "${DatabaseStack}" and name in LOGIN_SECRETS, export
        return name
    match = re.fullmatch(r"\$\{(\w+)\}#(\w+)", value["Fn::Sub"])
    assert match, value
    return match.group(1)


def test_environments_hold_secret_ids_never_secret_values(all_templates):
    checked = 0
    for rel, template in all_templates.items():
        assert "{{resolve:" not in json.dumps(template), f"{rel}: a deploy-time secret reference"
        for where, variables in _environments(template):
            for name, value in variables.items():
                checked += 1
                assert name not in SECRET_VARS, f"{rel} {where}: {name} set directly, not as {name}_SECRET_ID"
                if name.endswith("_SECRET_ID"):
                    var = name.removesuffix("_SECRET_ID")
                    assert var in SECRET_VARS, f"{rel} {where}: {name} is not in the secrets contract"
                    secret = _secret_of_id(value)
                    if var in JSON_KEYS:  # the right secret and the contract's JSON key
                        expected_secret, key = JSON_KEYS[var]
                        branch = value if "Fn::Sub" in value else next(
                            v for v in value["Fn::If"][1:] if v != {"Ref": "AWS::NoValue"})
                        assert branch == {"Fn::Sub": f"${{{expected_secret}}}#{key}"}, (rel, where, name)
                    else:  # a database URL: a whole login secret
                        assert secret in LOGIN_SECRETS, (rel, where, name)
                    continue
                assert not NOT_A_SECRET_NAME.search(name), f"{rel} {where}: {name} looks like a secret"
                if isinstance(value, str):
                    where_name = f"{rel} {where}: {name}"
                    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", value), f"{where_name} has credentials"
                    assert not re.fullmatch(r"[A-Za-z0-9+/_=-]{32,}", value), f"{where_name} looks like a key"
        for name, r in _resources(template, "AWS::ECS::TaskDefinition").items():
            for container in r["Properties"]["ContainerDefinitions"]:
                # ECS-injected secrets would put the values in the environment: the contract reads them.
                assert "Secrets" not in container, (rel, name)
    assert checked > 40


def _statements(node: Any) -> list[dict]:
    return [statement for n in _walk(node) if isinstance(n, dict) and "Statement" in n
            for statement in _as_list(n["Statement"])]


def _readable_secrets(statements: list[dict]) -> set[str]:
    """The secrets GetSecretValue is allowed on, named like _secret_of_id names them."""
    secrets = set()
    for s in statements:
        if "secretsmanager:GetSecretValue" not in _as_list(s["Action"]):
            continue
        assert s["Effect"] == "Allow" and "NotResource" not in s
        for resource in _as_list(s["Resource"]):
            assert resource != "*" and "*" not in json.dumps(resource), f"GetSecretValue on {resource}"
            if "Fn::ImportValue" in resource:
                secrets.add(_secret_of_id(resource))
                continue
            arn = resource["Fn::Sub"]
            match = re.fullmatch(r"arn:\$\{AWS::Partition\}:secretsmanager:\$\{AWS::Region\}"
                                 r":\$\{AWS::AccountId\}:secret:\$\{(\w+)\}-\?{6}", arn)
            assert match, f"GetSecretValue on {arn}: not one named secret"
            secrets.add(match.group(1))
    return secrets


def test_no_wildcard_permissions_anywhere(all_templates):
    for rel, template in all_templates.items():
        for statement in _statements(template["Resources"]):
            actions = _as_list(statement.get("Action", []))
            assert not any(a == "*" or a.endswith(":*") for a in actions), (rel, statement)
            assert "NotAction" not in statement and "NotResource" not in statement
            if "Resource" in statement and "*" in _as_list(statement["Resource"]):
                assert set(actions) <= STAR_RESOURCE_ACTIONS, (rel, statement)


def test_each_process_may_read_exactly_the_secrets_its_environment_names(oauth, ecs):
    # The Lambda: the Xero app, the token keys and its own login.
    function = oauth["Resources"]["OAuthFunction"]["Properties"]
    variables = function["Environment"]["Variables"]
    named = {_secret_of_id(v) for k, v in variables.items() if k.endswith("_SECRET_ID")}
    assert named == {XERO, TOKEN_KEYS, "ServiceLoginSecretArn"}
    assert _readable_secrets(_statements(function["Policies"])) == named
    # ECS: each task definition's role reads exactly what its containers name, and no other role reads any.
    roles = _resources(ecs, "AWS::IAM::Role")
    pipeline = {"DagsterLoginSecretArn", "PipelineLoginSecretArn", "ServiceLoginSecretArn", XERO, TOKEN_KEYS}
    expected = {
        "WebserverTaskDefinition": {"DagsterLoginSecretArn"},
        "DaemonTaskDefinition": {"DagsterLoginSecretArn"},
        "CodeServerTaskDefinition": pipeline,
        "RunTaskDefinition": pipeline,
        # The master, and the three logins it creates with their secrets' passwords.
        "MigrateTaskDefinition": LOGIN_SECRETS,
    }
    task_roles = set()
    for name, r in _resources(ecs, "AWS::ECS::TaskDefinition").items():
        (container,) = r["Properties"]["ContainerDefinitions"]
        named = {_secret_of_id(v) for k, v in _env(container).items() if k.endswith("_SECRET_ID")}
        role = r["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
        task_roles.add(role)
        assert named == expected[name], name
        assert _readable_secrets(_statements(roles[role])) == named, name
        # ECS's own role (image pull, logs) reads no secret at all.
        execution_role = r["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
        assert _readable_secrets(_statements(roles[execution_role])) == set()
    assert task_roles == set(roles) - {"TaskExecutionRole"}


def test_the_secrets_contract_is_secret_sources_own():
    """SECRET_VARS above is what oauth_service.secret_source reads: a variable added there (or here)
    only is a template check that passes for the wrong reason."""
    from oauth_service.secret_source import DATABASE_URLS, SECRET_VARIABLES

    assert set(SECRET_VARIABLES) == SECRET_VARS
    assert set(DATABASE_URLS) == SECRET_VARS - set(JSON_KEYS)


def test_each_database_url_is_the_login_of_its_process(oauth, ecs):
    """Which login each process connects as: the master only in the migrate task, which also gets the
    three logins it creates; the pipeline's login as the code server's and the runs' DATABASE_URL."""
    service, pipeline, dagster = "ServiceLoginSecretArn", "PipelineLoginSecretArn", "DagsterLoginSecretArn"
    pipeline_process = {"DATABASE_URL": pipeline, "APP_DATABASE_URL": service,
                        "DAGSTER_POSTGRES_URL": dagster}
    expected = {
        "MigrateTaskDefinition": {"DATABASE_URL": "MasterSecretArn", "APP_DATABASE_URL": service,
                                  "PIPELINE_DATABASE_URL": pipeline, "DAGSTER_POSTGRES_URL": dagster},
        "CodeServerTaskDefinition": pipeline_process,
        "RunTaskDefinition": pipeline_process,
        "WebserverTaskDefinition": {"DAGSTER_POSTGRES_URL": dagster},
        "DaemonTaskDefinition": {"DAGSTER_POSTGRES_URL": dagster},
        "OAuthFunction": {"DATABASE_URL": service, "APP_DATABASE_URL": service},
    }
    environments = {name: _env(r["Properties"]["ContainerDefinitions"][0])
                    for name, r in _resources(ecs, "AWS::ECS::TaskDefinition").items()}
    function = oauth["Resources"]["OAuthFunction"]["Properties"]
    environments["OAuthFunction"] = function["Environment"]["Variables"]
    assert set(environments) == set(expected)
    for name, env in environments.items():
        urls = {variable: _secret_of_id(env[variable + "_SECRET_ID"])
                for variable in SECRET_VARS - set(JSON_KEYS) if variable + "_SECRET_ID" in env}
        assert urls == expected[name], name


def test_the_login_names_are_distinct_and_no_group_role(database):
    """`xero-elt migrate` refuses a group role (NOLOGIN) as a login, and one login for two components:
    the defaults are neither, and a Rule refuses such parameters at deploy time."""
    from oauth_service.db import ANALYST_ROLE, APP_ROLE, KPI_READER_ROLE, PIPELINE_ROLE

    groups = {APP_ROLE, PIPELINE_ROLE, ANALYST_ROLE, KPI_READER_ROLE}
    logins = ("ServiceLoginName", "PipelineLoginName", "DagsterLoginName")
    defaults = [database["Parameters"][name]["Default"] for name in (*logins, "MasterUsername")]
    assert len(set(defaults)) == len(defaults) and not set(defaults) & groups, defaults
    assertions = database["Rules"]["LoginsAreDistinctAndNoGroupRoles"]["Assertions"]
    refused = {}
    for assertion in assertions:
        (listed, value), = [a["Fn::Contains"] for a in assertion["Assert"]["Fn::Not"]]
        refused[value["Ref"]] = listed
    assert set(refused) == set(logins)
    for i, name in enumerate(logins):  # each against the groups, the master and the logins after it
        others = [{"Ref": other} for other in ("MasterUsername", *logins[i + 1:])]
        assert set(map(str, refused[name])) >= set(groups) | set(map(str, others)), name


def test_the_daemon_launches_only_the_run_task_definition_and_passes_only_its_roles(ecs):
    policies = ecs["Resources"]["DaemonTaskRole"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in _statements(policies)}
    run = ecs["Resources"]["RunTaskDefinition"]["Properties"]
    assert run["Family"] == {"Fn::Sub": "${AWS::StackName}-run"}
    run_task = statements["RunOnlyTheRunTaskDefinitionOnThisCluster"]
    assert run_task["Action"] == "ecs:RunTask"
    assert run_task["Resource"]["Fn::Sub"].endswith(":task-definition/${AWS::StackName}-run:*")
    assert run_task["Condition"] == {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["Cluster", "Arn"]}}}
    pass_role = statements["PassOnlyTheRunTaskRoles"]
    assert pass_role["Action"] == "iam:PassRole"
    assert pass_role["Resource"] == [run["TaskRoleArn"], run["ExecutionRoleArn"]]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    # No other role may pass roles or start tasks.
    for name, role in _resources(ecs, "AWS::IAM::Role").items():
        if name != "DaemonTaskRole":
            actions = {a for s in _statements(role["Properties"]["Policies"]) for a in _as_list(s["Action"])}
            assert not actions & {"iam:PassRole", "ecs:RunTask", "ecs:RegisterTaskDefinition"}, name
    # Exactly one daemon, even during a deploy (two would launch the same queued runs twice).
    daemon = ecs["Resources"]["DaemonService"]["Properties"]
    assert daemon["DesiredCount"] == {"Fn::If": ["ServicesOn", 1, 0]}
    assert daemon["DeploymentConfiguration"]["MaximumPercent"] == 100


# ------------------------------------------------------------------------------------- ECS processes
def _containers(ecs: dict) -> dict[str, dict]:
    return {name: r["Properties"]["ContainerDefinitions"][0]
            for name, r in _resources(ecs, "AWS::ECS::TaskDefinition").items()}


def test_every_container_runs_a_command_that_reads_its_secrets_first(ecs):
    containers = _containers(ecs)
    for name, container in containers.items():
        assert container["Image"] == {"Ref": "ImageUri"}, name
        assert container["LogConfiguration"]["LogDriver"] == "awslogs", name
        assert container["LinuxParameters"] == {"InitProcessEnabled": True}, name
    commands = {name: list(c["Command"]) for name, c in containers.items()}
    # The image's commands (orchestration/entrypoints.py); `xero-elt` applies the secrets first thing.
    assert commands["WebserverTaskDefinition"] == ["xero-elt", "webserver", "--port", "3000"]
    assert commands["DaemonTaskDefinition"] == ["xero-elt", "daemon"]
    assert commands["CodeServerTaskDefinition"] == ["xero-elt", "code-server", "--port", "4000"]
    assert commands["MigrateTaskDefinition"] == ["xero-elt", "migrate"]
    from orchestration.cli import build_parser

    for name, command in commands.items():
        if name != "RunTaskDefinition":
            assert "EntryPoint" not in containers[name], name
            build_parser().parse_args(command[1:])  # a command and options the CLI knows
    # The run task: the launcher replaces its command with `dagster api execute_run`, which reads
    # DAGSTER_POSTGRES_URL before any of our code runs: the entry point applies the secrets, then execs.
    assert containers["RunTaskDefinition"]["EntryPoint"] == SECRETS_ENTRY_POINT
    # Every Dagster process uses deploy/aws/dagster.yaml; runs get exactly the code server's variables.
    for name in ("WebserverTaskDefinition", "DaemonTaskDefinition", "CodeServerTaskDefinition",
                 "RunTaskDefinition", "MigrateTaskDefinition"):
        path = _env(containers[name])["XERO_ELT_DAGSTER_YAML"]
        assert path == "/app/deploy/aws/dagster.yaml", name
    run, code_server = containers["RunTaskDefinition"], containers["CodeServerTaskDefinition"]
    assert run["Environment"] == code_server["Environment"]
    # The master secret holds no host or database: the migrate task names them (libpq's variables).
    migrate = _env(containers["MigrateTaskDefinition"])
    for variable, export in (("PGHOST", "DatabaseEndpoint"), ("PGPORT", "DatabasePort"),
                             ("PGDATABASE", "DatabaseName")):
        assert migrate[variable] == {"Fn::ImportValue": {"Fn::Sub": "${DatabaseStack}-" + export}}


def _image_env_and_volumes() -> tuple[dict[str, str], list[str]]:
    """The runtime stage's ENV values and VOLUME paths, from the Dockerfile."""
    runtime = (REPO / "Dockerfile").read_text().split(" AS runtime", 1)[1]
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+)", runtime.replace("\\\n", "\n"), re.M))
    [volumes] = re.findall(r"^VOLUME (\[.*\])$", runtime, re.M)
    return env, json.loads(volumes)


def test_every_container_runs_on_a_read_only_root_writing_only_to_its_task_volumes(ecs):
    """As with compose's read_only: ECS mounts the task's own volumes where the image writes (its
    VOLUMEs, which give them the image's owner), and every working folder the image names lies there."""
    env, image_volumes = _image_env_and_volumes()
    assert set(image_volumes) == {"/tmp", env["DAGSTER_HOME"]}
    writable_settings = ("DAGSTER_HOME", "DLT_DATA_DIR", "DBT_TARGET_PATH", "DBT_LOG_PATH",
                         "XERO_ELT_LOCAL_DIR", "HOME")
    for name, r in _resources(ecs, "AWS::ECS::TaskDefinition").items():
        [container] = r["Properties"]["ContainerDefinitions"]
        assert container["ReadonlyRootFilesystem"] is True, name
        declared = {v["Name"] for v in r["Properties"]["Volumes"]}
        mounts = {m["ContainerPath"]: m["SourceVolume"] for m in container["MountPoints"]}
        assert set(mounts) == set(image_volumes) and set(mounts.values()) <= declared, name
        for setting in writable_settings:
            assert any(Path(env[setting]).is_relative_to(m) for m in mounts), (name, setting)


def test_xero_elt_applies_the_secrets_before_anything_else(monkeypatch):
    """The commands above rely on it: `xero-elt` reads V_SECRET_ID secrets before parsing a setting."""
    import oauth_service.secret_source as secret_source
    from orchestration.cli import main

    class Applied(Exception):
        pass

    def apply_secrets(environ=None):
        raise Applied

    monkeypatch.setattr(secret_source, "apply_secrets", apply_secrets)
    with pytest.raises(Applied):
        main(["webserver", "--port", "3000"])


def test_the_run_entry_point_execs_its_arguments():
    """The run task's entry point (as ECS starts it) hands over to the command, arguments and exit code."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SECRET_ID")}
    entry_point = [sys.executable, *SECRETS_ENTRY_POINT[1:]]
    done = subprocess.run([*entry_point, sys.executable, "-c", "import sys; print(sys.argv[1:]); sys.exit(3)",
                           "a b", "--c"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (3, "['a b', '--c']"), done.stderr


def test_the_code_server_is_found_through_cloud_map(ecs):
    from orchestration.entrypoints import parse_host_port

    containers = _containers(ecs)
    discovery = ecs["Resources"]["CodeServerDiscovery"]["Properties"]
    assert ecs["Resources"]["Namespace"]["Properties"]["Name"] == {"Ref": "ServiceDiscoveryNamespace"}
    service = ecs["Resources"]["CodeServerService"]["Properties"]
    assert service["ServiceRegistries"] == [{"RegistryArn": {"Fn::GetAtt": ["CodeServerDiscovery", "Arn"]}}]
    code_server = containers["CodeServerTaskDefinition"]
    port = int(code_server["Command"][code_server["Command"].index("--port") + 1])
    assert port == code_server["PortMappings"][0]["ContainerPort"]
    for name in ("WebserverTaskDefinition", "DaemonTaskDefinition"):
        address = _env(containers[name])["XERO_ELT_CODE_SERVER"]["Fn::Sub"]
        host, parsed_port = parse_host_port(address, 0)
        assert (host, parsed_port) == (discovery["Name"] + ".${ServiceDiscoveryNamespace}", port), name
    # The webserver answers the load balancer on its own port.
    webserver = containers["WebserverTaskDefinition"]
    web_port = int(webserver["Command"][webserver["Command"].index("--port") + 1])
    assert web_port == webserver["PortMappings"][0]["ContainerPort"]
    assert ecs["Resources"]["WebserverTargetGroup"]["Properties"]["Port"] == web_port
    assert ecs["Resources"]["WebserverTargetGroup"]["Properties"]["HealthCheckPath"] == "/server_info"


def test_the_image_carries_the_ecs_instance_file():
    """XERO_ELT_DAGSTER_YAML names /app/deploy/aws/dagster.yaml: the build context and the image have it."""
    dockerfile = (REPO / "Dockerfile").read_text()
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!deploy/aws/dagster.yaml" in dockerignore or "!deploy/aws" in dockerignore
    # Copied to where the task definitions look for it (the image's WORKDIR is /app).
    assert re.search(r"^COPY .*\bdeploy/aws/dagster\.yaml .*\./deploy/aws/?$", dockerfile, re.M)
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)


# ------------------------------------------------------------------------------- deploy/aws/dagster.yaml
@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return yaml.safe_load((AWS / "dagster.yaml").read_text())


def _validate_launcher(config: dict):
    from dagster._config import validate_config
    from dagster_aws.ecs import EcsRunLauncher

    return validate_config(EcsRunLauncher.config_type(), config)


def test_the_instance_config_passes_dagsters_validation(instance_yaml, monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import class_from_code_pointer

    config, custom_class = dagster_instance_config(str(AWS), "dagster.yaml")
    assert custom_class is None
    # Each configurable class exists, and its own config passes its own schema (the instance schema
    # accepts any config under a class).
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://u:p@db.example/dagster")
    for section in ("run_launcher", "compute_logs"):
        klass = class_from_code_pointer(config[section]["module"], config[section]["class"])
        result = process_config(klass.config_type(), config[section].get("config") or {})
        assert result.success, (section, result.errors)
    from dagster_postgres import DagsterPostgresStorage

    result = process_config(DagsterPostgresStorage.config_type(), instance_yaml["storage"]["postgres"])
    assert result.success, result.errors
    assert instance_yaml["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}


@pytest.mark.parametrize("typo", [{"use_curent_ecs_task_config": True}, {"container_name": 7},
                                  {"secrets_tag": ["dagster"]}])
def test_a_launcher_typo_fails_the_validation(instance_yaml, typo):
    """The validation above can fail: an unknown key or a wrong type in the launcher's config."""
    config = copy.deepcopy(instance_yaml["run_launcher"]["config"])
    assert _validate_launcher(config).success
    config.update(typo)
    assert not _validate_launcher(config).success


def test_the_ecs_run_launcher_starts_runs_from_the_stacks_run_task_definition(instance_yaml, ecs):
    launcher = instance_yaml["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    config = launcher["config"]
    # The run task definition of dagster-ecs.yaml, named by the variable the daemon and webserver get.
    containers = _containers(ecs)
    for name in ("DaemonTaskDefinition", "WebserverTaskDefinition"):
        env = {e["Name"]: e["Value"] for e in containers[name]["Environment"]}
        assert env[config["task_definition"]["env"]] == {"Ref": "RunTaskDefinition"}, name
    assert config["container_name"] == containers["RunTaskDefinition"]["Name"]
    # Runs inherit the daemon's network (private subnets, tasks group, no public IP: checked above).
    assert config["use_current_ecs_task_config"] is True
    # No secretsmanager:ListSecrets and no secret values injected by tag: the run reads its own.
    assert config["secrets_tag"] is None
    assert not config.get("secrets") and not config.get("env_vars")


def test_run_queue_monitoring_and_retries_match_the_local_instance(instance_yaml):
    local = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    # Locally too: a run whose worker is lost is marked failed (then audited) within a bound.
    assert local["run_monitoring"]["enabled"] is True
    assert 0 < local["run_monitoring"]["max_runtime_seconds"] <= 24 * 3600
    assert instance_yaml["concurrency"] == local["concurrency"]
    assert instance_yaml["run_retries"] == local["run_retries"]
    monitoring = instance_yaml["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_runtime_seconds"] == local["run_monitoring"]["max_runtime_seconds"]
    # A Fargate task takes longer to start than a local process; never less time than locally.
    assert monitoring["start_timeout_seconds"] >= local["run_monitoring"]["start_timeout_seconds"]
    assert instance_yaml["telemetry"] == {"enabled": False}
