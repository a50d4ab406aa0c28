// Logging in. The page first asks the server who it is; when the server wants a user, the
// login form comes first, and the dashboard starts once the server has set the session
// cookie (HttpOnly: the page never sees it). Where anonymous visitors may look, a Log in
// button offers the form. Logging out ends the session on the server.

async function whoAmI() {
  return (await fetch('/api/v1/auth/me')).json();
}

/** Shows the form until the server takes a user and password. */
function loginForm(els) {
  els.screen.hidden = false;
  els.user.focus();
  return new Promise((resolve) => {
    els.form.addEventListener('submit', async (e) => {
      e.preventDefault();
      els.error.textContent = '';
      const response = await fetch('/api/v1/auth/login', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: els.user.value, password: els.password.value }),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        els.error.textContent = answer.error || `login failed (${response.status})`;
        els.password.select();
        return;
      }
      els.password.value = '';
      els.screen.hidden = true;
      resolve();
    });
  });
}

/**
 * Who the page is to the server ({user, role, signed_in, ...}), once it may go on: after the
 * login form where one is needed. The header shows the user with Log out, or Log in.
 */
export async function signIn(els) {
  let me = await whoAmI();
  if (me.login_required) {
    await loginForm(els);
    me = await whoAmI();
  }
  if (me.signed_in) {
    els.who.textContent = `${me.user} (${me.role})`;
    els.who.hidden = false;
    els.logout.hidden = false;
    els.logout.addEventListener('click', async () => {
      await fetch('/api/v1/auth/logout', { method: 'POST' });
      location.reload();
    });
  } else if (me.can_log_in) {
    els.login.hidden = false;
    els.login.addEventListener('click', async () => {
      await loginForm(els);
      location.reload();
    });
  }
  return me;
}
